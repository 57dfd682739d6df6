//! Replay of the ingest journal after a restart: agents' snapshots accepted (202) but not yet
//! stored when the service stopped or crashed go through the pipeline again, oldest first,
//! before new snapshots are taken.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::pipeline::PipelineInput;
use super::{NetworkService, journal};

impl NetworkService {
    /// Feeds the journalled snapshots to the pipeline, oldest first, with their clear addresses
    /// (`journal`), then lets new ones in. They were validated when accepted; one that no longer
    /// parses (a newer format) or whose addresses need another privacy key is logged and dropped.
    pub(super) async fn replay(
        self: Arc<Self>,
        unfinished: Vec<(i64, Vec<u8>)>,
        pipeline: mpsc::Sender<PipelineInput>,
    ) {
        tracing::info!(
            snapshots = unfinished.len(),
            "replaying agents' snapshots accepted before the restart"
        );
        for (id, json) in unfinished {
            match journal::read(&self.addresses, &json) {
                Ok(snapshot) => {
                    if pipeline.send(PipelineInput::Snapshot(Box::new(snapshot), id)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, id, "a journalled snapshot cannot be read; dropped");
                    let service = Arc::clone(&self);
                    let forgotten =
                        tokio::task::spawn_blocking(move || service.store.forget_snapshot(id)).await;
                    if !matches!(forgotten, Ok(Ok(()))) {
                        tracing::error!(id, "the unreadable snapshot stays in the journal");
                    }
                }
            }
        }
        self.replaying.store(false, Ordering::Release);
    }
}
