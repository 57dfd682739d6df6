//! The state every part of the malware server shares — settings, the analyser (models, store,
//! workers, sandbox, VirusTotal), the status counters, the limits every connection counts
//! against (connection gate, per-client request limits, memory budget of frames being read) —
//! and the operations on it that more than one part needs: admitting a connection and counting
//! a refusal, reloading the models (HTTP `/admin/reload`, SIGHUP) and the status report
//! (`/status`, `/metrics`).
//!
//! It lives apart from the accept loop (`server`), the connections (`connection`) and the HTTP
//! routes (`http`), which all read it, so none of them depends on another.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use sentinel_privacy::Pseudonymiser;
use sentinel_protocol::MemoryBudget;
use sentinel_transport::{AccessLog, ClientKey, ConnectionGate, GateLimits, Permit, RefusalLog};
use tokio::sync::Mutex;

use crate::analysis::{Analyser, VirusTotalStep};
use crate::client_limits::{ClientLimitSettings, ClientLimits};
use crate::exposure::AllowList;
use crate::models::{ModelLoadError, Models};
use crate::settings::ServerSettings;
use crate::status::{ModelReport, Status, StatusReport};

/// Why a model reload failed; the models in service stay in service.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Model(#[from] ModelLoadError),
    /// Nothing was reloaded: the rules and models in service stay.
    #[error("{0}; the YARA rules and the models in service stay")]
    Yara(#[from] sentinel_yara::YaraError),
    #[error("the reload job failed unexpectedly")]
    Panicked,
}

/// State shared by the listeners and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub settings: ServerSettings,
    pub analyser: Analyser,
    pub status: Status,
    pub data_dir: PathBuf,
    /// Networks clients may connect from (both listeners).
    pub allowed: AllowList,
    /// Connections open, in all and per client (both listeners together).
    pub gate: ConnectionGate,
    /// Requests in flight and request rate per client.
    pub client_limits: ClientLimits,
    /// Bytes of the request frames being read, all connections together.
    pub budget: MemoryBudget,
    /// Refused connections and requests, counted by reason and logged at a bounded rate.
    pub refusals: RefusalLog,
    /// One line per protocol request and per connection refused before its first request.
    pub access_log: AccessLog,
    /// How a verdict names a client known by its address (`[privacy] ip_storage`).
    pub client_addresses: Pseudonymiser,
    /// Reloads run one at a time, so two reloads cannot finish out of order.
    reload_lock: Mutex<()>,
}

impl Shared {
    pub fn new(
        settings: ServerSettings,
        analyser: Analyser,
        data_dir: PathBuf,
        access_log: AccessLog,
        client_addresses: Pseudonymiser,
    ) -> Shared {
        Shared {
            allowed: AllowList::new(&settings.allowed_clients),
            gate: ConnectionGate::new(GateLimits {
                max_connections: settings.max_connections,
                max_per_client: settings.max_connections_per_client,
            }),
            client_limits: ClientLimits::new(ClientLimitSettings {
                max_in_flight: settings.max_requests_per_client,
                rate: settings.client_request_rate,
                burst: settings.client_request_burst,
            }),
            budget: MemoryBudget::new(settings.frame_memory_budget),
            refusals: RefusalLog::new("tcp").with_access_log(access_log.clone()),
            access_log,
            client_addresses,
            settings,
            analyser,
            status: Status::default(),
            data_dir,
            reload_lock: Mutex::new(()),
        }
    }

    /// Admits a connection from `peer` (allow-list, then connection caps), or counts and
    /// logs why not; the connection is then closed by dropping it.
    pub fn admit(&self, peer: SocketAddr) -> Option<Permit> {
        let client = ClientKey::address(peer.ip());
        if !self.allowed.allows(peer.ip()) {
            self.refuse("not_allowed", &client, peer.ip());
            return None;
        }
        match self.gate.admit(client.clone()) {
            Ok(permit) => Some(permit),
            Err(refusal) => {
                self.refuse(refusal.reason(), &client, peer.ip());
                None
            }
        }
    }

    /// Counts and logs (and, within the log budget, writes to the access log) a connection from
    /// `address` closed before its first request.
    pub fn refuse(&self, reason: &'static str, client: &ClientKey, address: IpAddr) {
        self.status.connection_refused();
        self.refusals.refused_connection(reason, client, address);
    }

    /// Loads the models from the data directory and puts them in service.
    pub async fn reload(&self) -> Result<Arc<Models>, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        // The rules first: if they do not compile, nothing changes, and the error says where.
        if let Some(rules) = self.analyser.yara.clone() {
            let reloaded = tokio::task::spawn_blocking(move || rules.reload()).await;
            match reloaded.map_err(|_| ReloadError::Panicked).and_then(|info| info.map_err(ReloadError::from))
            {
                Ok(info) => {
                    tracing::info!(version = %info.version, files = info.files, rules = info.rules, "YARA rules reloaded")
                }
                Err(error) => {
                    self.status.reload_done(Err(error.to_string()));
                    return Err(error);
                }
            }
        }
        let data_dir = self.data_dir.clone();
        let store = Arc::clone(&self.analyser.store);
        let loaded = tokio::task::spawn_blocking(move || Models::load(&store, &data_dir))
            .await
            .map_err(|_| ReloadError::Panicked)
            .and_then(|models| models.map_err(ReloadError::from));
        self.status.reload_done(loaded.as_ref().map(|_| ()).map_err(ToString::to_string));
        let models = loaded?;
        tracing::info!(
            static_version = models.static_model.version(),
            static_source = %models.static_source,
            behaviour_version = models.behaviour_model.version(),
            behaviour_source = %models.behaviour_source,
            "models reloaded"
        );
        self.analyser.models.replace(models);
        Ok(self.analyser.models.current())
    }

    pub fn report(&self) -> StatusReport {
        let models = self.analyser.models.current();
        let virustotal = self.analyser.virustotal.as_ref().map(VirusTotalStep::report);
        self.status.report(
            ModelReport {
                static_version: models.static_model.version().to_owned(),
                static_source: models.static_source.clone(),
                behaviour_version: models.behaviour_model.version().to_owned(),
                behaviour_source: models.behaviour_source.clone(),
            },
            virustotal,
        )
    }
}

/// A handle that reloads the server's models (for SIGHUP).
#[derive(Debug, Clone)]
pub struct Reloader(pub(crate) Arc<Shared>);

impl Reloader {
    /// Reloads the models from `<data_dir>/models/`; returns the static model's version.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        Ok(self.0.reload().await?.static_model.version().to_owned())
    }
}
