//! What a test needs from outside the repository (the benign corpus, the shared data sets, the
//! Python peers it compares against) and what happens when it is missing: on a developer's
//! machine the test says why and skips; where the matching `SENTINEL_REQUIRE_*` variable is `1`
//! (`.ci/run` sets all three) the absence fails the test, so nothing is skipped silently in CI.

use std::fmt::Display;

/// Something a test needs that the repository does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prerequisite {
    /// The benign PE corpus built by `corpus/build.py` (`SENTINEL_REQUIRE_CORPUS`).
    Corpus,
    /// The data sets under `../shared/data` (`SENTINEL_REQUIRE_DATA`).
    Data,
    /// The Python peers (pefile, scikit-learn) of `.ci/requirements.txt` (`SENTINEL_REQUIRE_PEERS`).
    Peers,
}

impl Prerequisite {
    /// The environment variable that makes this prerequisite mandatory.
    pub fn variable(self) -> &'static str {
        match self {
            Prerequisite::Corpus => "SENTINEL_REQUIRE_CORPUS",
            Prerequisite::Data => "SENTINEL_REQUIRE_DATA",
            Prerequisite::Peers => "SENTINEL_REQUIRE_PEERS",
        }
    }

    /// Whether its absence must fail the test (the variable is `1`).
    pub fn is_required(self) -> bool {
        std::env::var(self.variable()).is_ok_and(|value| value == "1")
    }

    /// Reports that the prerequisite is missing for `why`: panics when it is required, otherwise
    /// prints why the test skips. The caller returns right after.
    #[track_caller]
    pub fn missing(self, why: impl Display) {
        assert!(!self.is_required(), "{}=1 but {why}", self.variable());
        eprintln!("SKIPPED: {why} (set {}=1 to make this a failure)", self.variable());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prerequisite_has_its_own_variable() {
        let variables: Vec<&str> = [Prerequisite::Corpus, Prerequisite::Data, Prerequisite::Peers]
            .map(Prerequisite::variable)
            .into();
        assert_eq!(variables, ["SENTINEL_REQUIRE_CORPUS", "SENTINEL_REQUIRE_DATA", "SENTINEL_REQUIRE_PEERS"]);
    }
}
