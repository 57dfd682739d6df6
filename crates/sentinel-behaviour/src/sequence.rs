//! API-call sequences as the models see them.
//!
//! Every source (MalBehavD's CSV, Mal-API-2019's index numbers, CAPE reports,
//! client-sent call lists) goes through [`normalise_api_name`] so that a model
//! trained on one source scores the others on the same vocabulary. Sequences
//! are bounded ([`MAX_CALLS`]) because they come from hostile programs that can
//! make millions of calls.

use serde::{Deserialize, Serialize};

/// Calls kept per sequence; further calls are dropped and the sequence is
/// marked as truncated. Large enough for the first minutes of a busy sample.
pub const MAX_CALLS: usize = 200_000;

/// Longest API name accepted. Real Windows API names are under 64 characters.
pub const MAX_API_NAME_LEN: usize = 96;

/// CAPE's monitor (capemon) names a few hooks differently from the Cuckoo
/// monitor that recorded MalBehavD. Each pair maps CAPE's lower-cased name to
/// the Cuckoo name for the same operation, so that those calls hit the
/// vocabulary the detector learned instead of being unknown.
const CAPE_TO_CUCKOO: &[(&str, &str)] = &[
    // capemon hooks the internal variant that the loader calls with the caller's address.
    ("ldrgetprocedureaddressforcaller", "ldrgetprocedureaddress"),
    // Windows 10 added the Ex variant; it unmaps a view just like the original.
    ("ntunmapviewofsectionex", "ntunmapviewofsection"),
];

/// The canonical form of an API name, or `None` when `raw` is not a plausible
/// API name (empty, too long, or with characters no export name has).
///
/// Names are lower-cased (Mal-API-2019's index is lower-case, Cuckoo and CAPE
/// use the exported spelling) and CAPE-only aliases are mapped to Cuckoo's
/// names. The `A`/`W` suffix is kept: both monitors hook the ANSI and Unicode
/// entry points separately and record them under their exported names, and the
/// choice between them is itself a signal (old tool chains, hand-written
/// loaders). `Ex` variants are kept too, for the same reason.
pub fn normalise_api_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    if name.is_empty()
        || name.len() > MAX_API_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'@' | b'?' | b'$' | b'.'))
    {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    let mapped =
        CAPE_TO_CUCKOO.iter().find(|(cape, _)| *cape == lower).map(|(_, cuckoo)| (*cuckoo).to_owned());
    Some(mapped.unwrap_or(lower))
}

/// An ordered, bounded list of normalised API-call names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCallSequence {
    calls: Vec<String>,
    rejected: usize,
    truncated: bool,
}

impl ApiCallSequence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Normalises and appends every name of `calls`, in order, up to
    /// [`MAX_CALLS`]. Names that are not plausible API names are counted in
    /// [`rejected`](Self::rejected) and skipped.
    pub fn from_calls<I, S>(calls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sequence = Self::new();
        for call in calls {
            if !sequence.push(call.as_ref()) {
                break;
            }
        }
        sequence
    }

    /// Appends one call. Returns `false` once the sequence is full (the call is
    /// then dropped and the sequence marked as truncated).
    pub fn push(&mut self, raw: &str) -> bool {
        if self.calls.len() >= MAX_CALLS {
            self.truncated = true;
            return false;
        }
        match normalise_api_name(raw) {
            Some(name) => self.calls.push(name),
            None => self.rejected += 1,
        }
        true
    }

    pub fn calls(&self) -> &[String] {
        &self.calls
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Names skipped because they were not plausible API names.
    pub fn rejected(&self) -> usize {
        self.rejected
    }

    /// Whether calls beyond [`MAX_CALLS`] were dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Each distinct API once, in order of first call, at most `limit` of them.
    /// MalBehavD records a sample this way (and stops at 175 APIs), so the
    /// malware detector sees every source in this shape.
    pub(crate) fn distinct_in_order(&self, limit: usize) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.calls.iter().map(String::as_str).filter(|name| seen.insert(*name)).take(limit).collect()
    }

    /// The calls with runs of the same API collapsed to one. Mal-API-2019 keeps
    /// repeats and CAPE folds some of them (`repeated`), so collapsing runs
    /// makes both look alike for the family classifier.
    pub(crate) fn collapsed(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for name in &self.calls {
            if out.last() != Some(&name.as_str()) {
                out.push(name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_and_aliased_but_keep_suffixes() {
        assert_eq!(normalise_api_name(" RegOpenKeyExW ").as_deref(), Some("regopenkeyexw"));
        assert_eq!(normalise_api_name("CryptAcquireContextA").as_deref(), Some("cryptacquirecontexta"));
        assert_eq!(
            normalise_api_name("LdrGetProcedureAddressForCaller").as_deref(),
            Some("ldrgetprocedureaddress")
        );
        assert_eq!(normalise_api_name(""), None);
        assert_eq!(normalise_api_name("Nt Close"), None);
        assert_eq!(normalise_api_name("<script>"), None);
        assert_eq!(normalise_api_name(&"a".repeat(MAX_API_NAME_LEN + 1)), None);
    }

    #[test]
    fn sequences_count_rejects_and_views_match_the_training_shapes() {
        let s = ApiCallSequence::from_calls(["NtClose", "NtClose", "bad name", "LdrLoadDll", "NtClose"]);
        assert_eq!(s.len(), 4);
        assert_eq!(s.rejected(), 1);
        assert!(!s.truncated());
        assert_eq!(s.distinct_in_order(10), ["ntclose", "ldrloaddll"]);
        assert_eq!(s.distinct_in_order(1), ["ntclose"]);
        assert_eq!(s.collapsed(), ["ntclose", "ldrloaddll", "ntclose"]);
    }

    #[test]
    fn sequences_stop_at_the_limit() {
        let s = ApiCallSequence::from_calls(std::iter::repeat_n("NtClose", MAX_CALLS + 5));
        assert_eq!(s.len(), MAX_CALLS);
        assert!(s.truncated());
    }
}
