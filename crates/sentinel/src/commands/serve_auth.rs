//! How `sentinel serve` guards its HTTP API (docs/security.md): authentication is on unless
//! `[auth] enabled = false`, which is refused while any listener is off loopback; the first
//! start on a data directory that never had a token makes the token `admin` (scope `admin`)
//! and writes it to `DATA_DIR/admin.token` (mode 0600), logging the file's path, never the
//! token.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use sentinel_api::Access;
use sentinel_auth::{
    AuthSettings, Authenticator, HS256_SECRET_ENV, IssueError, JwtVerifier, Scope, issue_api_token,
};
use sentinel_store::{NewAuditEvent, Store, StoreError, local_user_principal};

/// The file of the first admin token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Refuses `[auth] enabled = false` unless every listener is on a loopback address.
pub(super) fn check_listeners(
    settings: &AuthSettings,
    listeners: &[(&str, SocketAddr)],
) -> anyhow::Result<()> {
    if settings.enabled {
        return Ok(());
    }
    if let Some((name, address)) = listeners.iter().find(|(_, address)| !address.ip().is_loopback()) {
        anyhow::bail!(
            "[auth] enabled = false is refused: the {name} listener is on {address}, not a loopback \
             address, so anyone who reaches it could retrain and roll back models, reload them and read \
             the stream of connections. Turn authentication on, or listen on 127.0.0.1 / ::1 only"
        );
    }
    tracing::warn!("authentication is off ([auth] enabled = false): every local user may use the HTTP API");
    Ok(())
}

/// The access control of the HTTP listener; makes the first admin token if needed.
pub(super) fn access(settings: &AuthSettings, store: &Arc<Store>, data_dir: &Path) -> anyhow::Result<Access> {
    if !settings.enabled {
        return Ok(Access::unauthenticated(settings));
    }
    let secret = std::env::var(HS256_SECRET_ENV).ok();
    let jwt = JwtVerifier::from_settings(&settings.jwt, secret.as_deref())?;
    if jwt.is_some() && settings.jwt.audience.is_none() {
        tracing::warn!(
            "[auth.jwt] audience is not set: JWTs the provider made for other services are accepted"
        );
    }
    if !store.has_api_tokens().context("cannot read the API tokens")? {
        create_admin_token(store, data_dir)?;
    }
    Ok(Access::authenticated(Arc::new(Authenticator::new(Arc::clone(store), jwt)), settings))
}

fn create_admin_token(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let secret = match issue_api_token(store, "admin", Scope::Admin.into(), None) {
        Ok((secret, _)) => secret,
        // Replicas starting together on one shared store: another one made the first token (and
        // writes the file, in the data directory they share).
        Err(IssueError::Store(StoreError::ApiTokenNameTaken(_))) => {
            tracing::info!("another replica of this store created the first admin token");
            return Ok(());
        }
        Err(error) => return Err(error).context("cannot create the first admin token"),
    };
    let event =
        NewAuditEvent::new(local_user_principal(), "token.create", Some("admin".to_owned()), "ok", None)
            .with_detail("scopes", Scope::Admin.as_str())
            .with_detail("first_admin_token", true);
    store.record_audit_event(event).context("cannot record the first admin token in the audit table")?;
    // A file left by an earlier data directory's token is replaced, never followed if a link.
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("cannot replace {}", path.display()));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{}", secret.expose())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "created the API token `admin` (scope admin); it is in this file, readable by this user only");
    Ok(())
}
