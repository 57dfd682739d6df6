//! Models promoted elsewhere: on a store shared by several replicas (PostgreSQL), a model
//! promoted, imported or rolled back through one replica must reach the others. Each replica
//! watches the registry's active static and behaviour versions (two small queries every few
//! seconds, no artifact read) and reloads its models when either changes — the same reload as
//! `POST /admin/reload`, so requests in flight keep the models they started with.
//!
//! Polling rather than a notification channel: it needs nothing of the database but its
//! tables, a missed poll is caught up by the next, and a replica that was down simply loads
//! the active versions when it starts.

use std::sync::Arc;
use std::time::Duration;

use sentinel_store::{ModelKind, Store, StoreError};

use crate::state::Reloader;

/// The active versions the models in service were loaded from.
type ActiveVersions = (Option<i64>, Option<i64>);

fn active_versions(store: &Store) -> Result<ActiveVersions, StoreError> {
    Ok((store.active_model_id(ModelKind::Static)?, store.active_model_id(ModelKind::Behaviour)?))
}

/// Watches the registry of `store` every `every` and reloads through `reloader` when the active
/// static or behaviour version changed. Runs until the task is aborted. A failed poll or reload
/// is logged and tried again at the next tick.
pub async fn follow_registry(reloader: Reloader, store: Arc<Store>, every: Duration) {
    let read = |store: Arc<Store>| async move {
        tokio::task::spawn_blocking(move || active_versions(&store))
            .await
            .map_err(|error| StoreError::Postgres(format!("the registry poll panicked: {error}")))
            .and_then(|versions| versions)
    };
    let mut in_service = match read(Arc::clone(&store)).await {
        Ok(versions) => Some(versions),
        Err(error) => {
            tracing::warn!(%error, "cannot read the registry's active models; will retry");
            None
        }
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let active = match read(Arc::clone(&store)).await {
            Ok(active) => active,
            Err(error) => {
                tracing::warn!(%error, "cannot read the registry's active models; will retry");
                continue;
            }
        };
        if in_service == Some(active) {
            continue;
        }
        match reloader.reload().await {
            Ok(version) => {
                tracing::info!(static_version = %version, "models changed in the shared registry: reloaded");
                in_service = Some(active);
            }
            Err(error) => {
                tracing::error!(%error, "models changed in the shared registry but cannot be reloaded")
            }
        }
    }
}
