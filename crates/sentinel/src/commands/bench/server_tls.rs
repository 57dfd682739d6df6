//! The TLS half of `sentinel bench server --tls`: certificates for the run (a private CA, the
//! server's and a client's, as `sentinel certs init` writes them), a [`Connector`] that opens
//! plain or TLS protocol connections so the same measurements run over both, and the cost of
//! a connection's set-up — TCP connect and first exchange, plain against TLS 1.3 with client
//! certificates.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sentinel_protocol::{Client, Request, Response};
use sentinel_transport::TlsClientOptions;
use sentinel_transport::tokio_rustls::rustls::ClientConfig;
use sentinel_transport::tokio_rustls::rustls::pki_types::ServerName;
use serde_json::json;

use crate::commands::certs;

/// The run's certificates, in a directory of its own.
pub(super) struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    pub(super) fn create(data_dir: &Path) -> anyhow::Result<Certificates> {
        let dir = data_dir.join("certs");
        certs::write_certificates(&dir, &[], "sentinel-bench", 1)?;
        Ok(Certificates { dir })
    }

    /// `serve` arguments: a TLS protocol port on a free loopback port, requiring client
    /// certificates of the run's CA.
    pub(super) fn serve_args(&self) -> Vec<OsString> {
        let file = |name: &str| self.dir.join(name).into_os_string();
        vec![
            "--tcp-tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tcp-tls-cert".into(),
            file("server.pem"),
            "--tcp-tls-key".into(),
            file("server.key"),
            "--tcp-client-ca".into(),
            file("ca.pem"),
        ]
    }
}

/// How the benchmark's clients reach the server.
#[derive(Clone)]
pub(super) enum Connector {
    Plain(SocketAddr),
    Tls { address: SocketAddr, config: Arc<ClientConfig> },
}

impl Connector {
    /// TLS 1.3 to `address`, trusting the run's CA and presenting its client certificate.
    pub(super) fn tls(address: SocketAddr, certificates: &Certificates) -> anyhow::Result<Connector> {
        let config = sentinel_transport::client_config(&TlsClientOptions {
            ca_file: certificates.dir.join("ca.pem"),
            certificate_file: Some(certificates.dir.join("client.pem")),
            key_file: Some(certificates.dir.join("client.key")),
            alpn_protocols: Vec::new(),
        })?;
        Ok(Connector::Tls { address, config })
    }

    pub(super) async fn connect(&self) -> anyhow::Result<Client> {
        match self {
            Connector::Plain(address) => Ok(Client::connect(*address).await?),
            Connector::Tls { address, config } => {
                let name = ServerName::from(address.ip());
                Client::connect_tls(*address, name, Arc::clone(config)).await.context("TLS connection")
            }
        }
    }
}

/// Connections opened one after the other, each up to its first answer (the options
/// request): p50/p99 in milliseconds for the plain and the TLS port.
pub(super) async fn handshakes(
    count: usize,
    plain: &Connector,
    tls: &Connector,
) -> anyhow::Result<serde_json::Value> {
    let plain_ms = connection_set_up(count, plain).await?;
    let tls_ms = connection_set_up(count, tls).await?;
    Ok(json!({ "connections": count, "plain": plain_ms, "tls": tls_ms }))
}

async fn connection_set_up(count: usize, connector: &Connector) -> anyhow::Result<serde_json::Value> {
    let options = Request::options(&[sentinel_protocol::OPTION_ERROR_DETAIL]);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let started = Instant::now();
        let mut client = connector.connect().await?;
        let answer = client.request(&options).await?;
        times.push(started.elapsed());
        anyhow::ensure!(matches!(answer, Response::Yes(_)), "the options request failed: {answer:?}");
    }
    times.sort();
    let ms = |fraction: f64| {
        let index = ((times.len() as f64 - 1.0) * fraction).round() as usize;
        times.get(index).map_or(0.0, Duration::as_secs_f64) * 1000.0
    };
    Ok(json!({ "p50_ms": ms(0.5), "p99_ms": ms(0.99) }))
}

pub(super) fn print_handshakes(report: &serde_json::Value) {
    let ms = |side: &str, key: &str| report[side][key].as_f64().unwrap_or(0.0);
    println!(
        "connection set-up ({} connections, connect + first answer): plain p50 {:.3} ms p99 {:.3} ms; \
         TLS 1.3 with client certificate p50 {:.3} ms p99 {:.3} ms (handshake ≈ {:.3} ms)",
        report["connections"],
        ms("plain", "p50_ms"),
        ms("plain", "p99_ms"),
        ms("tls", "p50_ms"),
        ms("tls", "p99_ms"),
        ms("tls", "p50_ms") - ms("plain", "p50_ms"),
    );
}
