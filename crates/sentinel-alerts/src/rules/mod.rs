//! The rules: what turns an observation into an [`Alert`]. Each is plain state and
//! arithmetic, fed by whoever observes — the network service's results, its health, the
//! malware server's outcomes, the host's load — so the rules know nothing of those services
//! and are tested on their own. `sentinel serve` feeds them (docs/alerts.md lists every rule,
//! its identifier and its default threshold).

mod accuracy;
mod anomaly;
mod failure;
mod malware;
mod overload;

pub use accuracy::{AccuracyDrop, ModelAccuracy};
pub use anomaly::{AnomalyRate, Prediction, anomaly};
pub use failure::Failure;
pub use malware::{MalwareOutcome, malware_verdict};
pub use overload::{Load, SystemLoad, overload};
