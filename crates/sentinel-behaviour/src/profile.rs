//! The behaviour profile: dense features of a call sequence for the detector's
//! boosted trees, which see what TF-IDF hides.
//!
//! * **Order**: for each of the most common APIs, where it is first called,
//!   as a fraction of the sequence (missing when never called). The detector's
//!   sequences list each API once in order of first call, so this is the
//!   order information a bag of n-grams only has locally.
//! * **Presence of the most common bigrams** (argument-free transitions
//!   `a > b`).
//! * **Call categories** (registry, file, process, memory, network…, by name):
//!   the share of the sequence in each, and the transitions between
//!   categories (`file > network`), as shares of all transitions.
//! * **Sequence statistics**: length, categories used, share of native
//!   (`Nt`/`Zw`/`Ldr`/`Rtl`) calls, share of ANSI (`…A`) and `Ex` names.
//!
//! Every feature has a name, so the trees' contributions can explain a verdict.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The categories, in feature order; [`category`] maps a name to one of them.
pub(crate) const CATEGORIES: [&str; 13] = [
    "registry", "file", "process", "memory", "network", "crypto", "service", "system", "sync", "ui",
    "loader", "com", "other",
];

/// Keywords of each category (matched as substrings of the lower-case name),
/// checked in this order: the first match wins, so more specific families
/// (services, crypto) come before broad ones (file, process).
const CATEGORY_KEYWORDS: [(usize, &[&str]); 12] = [
    (6, &["service", "scmanager"]),
    (5, &["crypt", "hash", "certopen", "pfx"]),
    (
        4,
        &[
            "socket",
            "connect",
            "send",
            "recv",
            "internet",
            "http",
            "wsa",
            "dns",
            "getaddrinfo",
            "gethostby",
            "bind",
            "listen",
            "accept",
            "urldownload",
            "netshare",
            "netuser",
            "obtainuseragent",
            "select",
        ],
    ),
    (0, &["reg", "key"]),
    (10, &["ldr", "loadlibrary", "getprocaddress", "getmodule", "resource", "dll"]),
    (3, &["virtual", "memory", "section", "heap", "mapview", "globalalloc", "localalloc"]),
    (2, &["process", "thread", "shellexecute", "winexec", "exitwindows", "debug", "toolhelp32", "job"]),
    (1, &["file", "directory", "path", "volume", "drive", "disk", "device", "copy", "move"]),
    (
        8,
        &[
            "mutant",
            "mutex",
            "event",
            "semaphore",
            "sleep",
            "delayexecution",
            "waitfor",
            "timer",
            "tickcount",
            "time",
        ],
    ),
    (
        9,
        &[
            "window",
            "message",
            "hook",
            "cursor",
            "keystate",
            "keyboard",
            "dialog",
            "draw",
            "desktop",
            "clipboard",
            "icon",
        ],
    ),
    (11, &["cocreate", "coinit", "coget", "ole", "variant", "sysalloc", "iwbem"]),
    (
        7,
        &[
            "system",
            "computername",
            "username",
            "version",
            "adapters",
            "locale",
            "timezone",
            "environment",
            "information",
            "firmware",
            "token",
            "privilege",
            "sid",
        ],
    ),
];

/// The category index of a (normalised, lower-case) API name.
pub(crate) fn category(name: &str) -> usize {
    CATEGORY_KEYWORDS
        .iter()
        .find(|(_, words)| words.iter().any(|w| name.contains(w)))
        .map_or(CATEGORIES.len() - 1, |(c, _)| *c)
}

/// Sequence statistics, in feature order.
const STATISTICS: [&str; 5] = [
    "[calls: ln(1 + n)]",
    "[categories used]",
    "[share of native calls]",
    "[share of ANSI names]",
    "[share of Ex names]",
];

/// The fitted profile: which APIs and bigrams have their own features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileSpace {
    /// APIs whose first-call position is a feature.
    pub apis: Vec<String>,
    /// Bigrams whose presence is a feature, as `[first, second]`.
    pub bigrams: Vec<[String; 2]>,
    #[serde(skip)]
    api_index: HashMap<String, usize>,
    #[serde(skip)]
    bigram_index: HashMap<(String, String), usize>,
}

/// Most APIs and bigrams a profile may name (bounds a hostile model file).
const MAX_PROFILE_ENTRIES: usize = 100_000;

impl ProfileSpace {
    /// Keeps the APIs and bigrams found in at least `min_df` documents, at
    /// most `max_apis` / `max_bigrams` of them (the most frequent first, ties
    /// by name so the choice is deterministic).
    pub fn fit(documents: &[Vec<&str>], min_df: u32, max_apis: usize, max_bigrams: usize) -> ProfileSpace {
        let mut api_df: HashMap<&str, u32> = HashMap::new();
        let mut bigram_df: HashMap<(&str, &str), u32> = HashMap::new();
        for doc in documents {
            let mut apis: Vec<&str> = doc.clone();
            apis.sort_unstable();
            apis.dedup();
            for api in apis {
                *api_df.entry(api).or_default() += 1;
            }
            let mut bigrams: Vec<(&str, &str)> = doc.windows(2).map(|w| (w[0], w[1])).collect();
            bigrams.sort_unstable();
            bigrams.dedup();
            for bigram in bigrams {
                *bigram_df.entry(bigram).or_default() += 1;
            }
        }
        fn top<K: Ord + Copy>(df: HashMap<K, u32>, min_df: u32, limit: usize) -> Vec<K> {
            let mut kept: Vec<(K, u32)> = df.into_iter().filter(|&(_, n)| n >= min_df.max(1)).collect();
            kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            kept.truncate(limit);
            let mut keys: Vec<K> = kept.into_iter().map(|(k, _)| k).collect();
            keys.sort_unstable();
            keys
        }
        let mut space = ProfileSpace {
            apis: top(api_df, min_df, max_apis).into_iter().map(str::to_owned).collect(),
            bigrams: top(bigram_df, min_df, max_bigrams)
                .into_iter()
                .map(|(a, b)| [a.to_owned(), b.to_owned()])
                .collect(),
            api_index: HashMap::new(),
            bigram_index: HashMap::new(),
        };
        space.build_index();
        space
    }

    /// Checks a deserialised profile and builds its lookup tables.
    pub fn validate(&mut self) -> Result<(), ModelError> {
        if self.apis.len() + self.bigrams.len() > MAX_PROFILE_ENTRIES {
            return Err(ModelError::Invalid(format!("profile: more than {MAX_PROFILE_ENTRIES} entries")));
        }
        self.build_index();
        if self.api_index.len() != self.apis.len() || self.bigram_index.len() != self.bigrams.len() {
            return Err(ModelError::Invalid("profile: an API or bigram is listed twice".into()));
        }
        Ok(())
    }

    fn build_index(&mut self) {
        self.api_index = self.apis.iter().enumerate().map(|(i, a)| (a.clone(), i)).collect();
        self.bigram_index =
            self.bigrams.iter().enumerate().map(|(i, [a, b])| ((a.clone(), b.clone()), i)).collect();
    }

    /// Number of features.
    pub fn dimension(&self) -> usize {
        self.apis.len()
            + self.bigrams.len()
            + 2 * CATEGORIES.len()
            + CATEGORIES.len().pow(2)
            + STATISTICS.len()
    }

    /// The feature vector of `tokens` (NaN = API never called).
    pub fn transform(&self, tokens: &[&str]) -> Vec<f64> {
        let mut row = vec![0.0; self.dimension()];
        let n = tokens.len().max(1) as f64;
        let (apis, rest) = row.split_at_mut(self.apis.len());
        apis.iter_mut().for_each(|v| *v = f64::NAN);
        for (position, token) in tokens.iter().enumerate() {
            if let Some(&i) = self.api_index.get(*token)
                && apis[i].is_nan()
            {
                apis[i] = position as f64 / n;
            }
        }
        let (bigrams, rest) = rest.split_at_mut(self.bigrams.len());
        let mut key = (String::new(), String::new());
        for pair in tokens.windows(2) {
            key.0.clear();
            key.0.push_str(pair[0]);
            key.1.clear();
            key.1.push_str(pair[1]);
            if let Some(&i) = self.bigram_index.get(&key) {
                bigrams[i] = 1.0;
            }
        }
        let k = CATEGORIES.len();
        let (shares, rest) = rest.split_at_mut(k);
        let (present, rest) = rest.split_at_mut(k);
        let (transitions, statistics) = rest.split_at_mut(k * k);
        let categories: Vec<usize> = tokens.iter().map(|t| category(t)).collect();
        for &c in &categories {
            shares[c] += 1.0 / n;
            present[c] = 1.0;
        }
        let pairs = categories.len().saturating_sub(1).max(1) as f64;
        for pair in categories.windows(2) {
            transitions[pair[0] * k + pair[1]] += 1.0 / pairs;
        }
        let share = |test: fn(&str) -> bool| tokens.iter().filter(|t| test(t)).count() as f64 / n;
        statistics[0] = (1.0 + tokens.len() as f64).ln();
        statistics[1] = present.iter().sum();
        statistics[2] = share(|t| ["nt", "zw", "ldr", "rtl"].iter().any(|p| t.starts_with(p)));
        statistics[3] = share(|t| t.len() > 2 && t.ends_with('a'));
        statistics[4] = share(|t| t.ends_with("ex") || t.ends_with("exa") || t.ends_with("exw"));
        row
    }

    /// A readable name for feature `index`, for explanations.
    pub fn feature_name(&self, index: usize) -> String {
        let k = CATEGORIES.len();
        let mut i = index;
        if i < self.apis.len() {
            return format!("{} [first-call position]", self.apis[i]);
        }
        i -= self.apis.len();
        if i < self.bigrams.len() {
            return format!("{} > {}", self.bigrams[i][0], self.bigrams[i][1]);
        }
        i -= self.bigrams.len();
        if i < k {
            return format!("[share of {} calls]", CATEGORIES[i]);
        }
        i -= k;
        if i < k {
            return format!("[uses {} calls]", CATEGORIES[i]);
        }
        i -= k;
        if i < k * k {
            return format!("[{} > {} transitions]", CATEGORIES[i / k], CATEGORIES[i % k]);
        }
        i -= k * k;
        STATISTICS.get(i).map_or_else(|| format!("[feature {index}]"), |s| (*s).to_owned())
    }
}

/// The family classifier's dense view, for its trees: for each API of its
/// vocabulary, `ln(1 + calls)` in the whole sequence (repeats count: how
/// often a program calls an API tells families apart), its share of the
/// collapsed sequence and where it is first called; then the lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FamilyProfile {
    pub apis: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

impl FamilyProfile {
    /// Keeps the APIs called in at least `min_df` of the (collapsed) documents.
    pub fn fit(documents: &[Vec<&str>], min_df: u32) -> FamilyProfile {
        let mut df: HashMap<&str, u32> = HashMap::new();
        for doc in documents {
            let mut apis = doc.clone();
            apis.sort_unstable();
            apis.dedup();
            for api in apis {
                *df.entry(api).or_default() += 1;
            }
        }
        let mut apis: Vec<String> =
            df.into_iter().filter(|&(_, n)| n >= min_df.max(1)).map(|(a, _)| a.to_owned()).collect();
        apis.sort_unstable();
        let mut profile = FamilyProfile { apis, index: HashMap::new() };
        profile.build_index();
        profile
    }

    pub fn validate(&mut self) -> Result<(), ModelError> {
        if self.apis.len() > MAX_PROFILE_ENTRIES {
            return Err(ModelError::Invalid(format!("family profile: more than {MAX_PROFILE_ENTRIES} APIs")));
        }
        self.build_index();
        if self.index.len() != self.apis.len() {
            return Err(ModelError::Invalid("family profile: an API is listed twice".into()));
        }
        Ok(())
    }

    fn build_index(&mut self) {
        self.index = self.apis.iter().enumerate().map(|(i, a)| (a.clone(), i)).collect();
    }

    pub fn dimension(&self) -> usize {
        3 * self.apis.len() + 3
    }

    /// The feature vector of a sequence: `all` its calls and `collapsed`,
    /// the classifier's view (runs collapsed, bounded).
    pub fn transform(&self, all: &[String], collapsed: &[&str]) -> Vec<f64> {
        let n = self.apis.len();
        let mut row = vec![0.0; self.dimension()];
        for call in all {
            if let Some(&i) = self.index.get(call.as_str()) {
                row[i] += 1.0;
            }
        }
        row[..n].iter_mut().for_each(|v: &mut f64| *v = v.ln_1p());
        row[2 * n..3 * n].iter_mut().for_each(|v| *v = f64::NAN);
        let length = collapsed.len().max(1) as f64;
        for (position, call) in collapsed.iter().enumerate() {
            if let Some(&i) = self.index.get(*call) {
                row[n + i] += 1.0 / length;
                if row[2 * n + i].is_nan() {
                    row[2 * n + i] = position as f64 / length;
                }
            }
        }
        let mut distinct: Vec<&str> = collapsed.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        row[3 * n] = (all.len() as f64).ln_1p();
        row[3 * n + 1] = (collapsed.len() as f64).ln_1p();
        row[3 * n + 2] = distinct.len() as f64;
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_profile_counts_repeats_shares_and_first_calls() {
        let profile = FamilyProfile::fit(&[vec!["a", "b"], vec!["a", "c"]], 2);
        assert_eq!(profile.apis, ["a"]);
        let all: Vec<String> = ["b", "a", "a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let row = profile.transform(&all, &["b", "a", "b"]);
        assert_eq!(row.len(), profile.dimension());
        assert!((row[0] - 3f64.ln_1p()).abs() < 1e-12, "three calls of a");
        assert!((row[1] - 1.0 / 3.0).abs() < 1e-12 && (row[2] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(row[5], 2.0, "two distinct APIs");
        assert!(profile.transform(&[], &[])[2].is_nan(), "never called: missing position");
    }

    #[test]
    fn categories_follow_the_api_names() {
        assert_eq!(CATEGORIES[category("regsetvalueexw")], "registry");
        assert_eq!(CATEGORIES[category("ntopenkey")], "registry");
        assert_eq!(CATEGORIES[category("ntcreatefile")], "file");
        assert_eq!(CATEGORIES[category("createremotethread")], "process");
        assert_eq!(CATEGORIES[category("ntallocatevirtualmemory")], "memory");
        assert_eq!(CATEGORIES[category("internetopenurla")], "network");
        assert_eq!(CATEGORIES[category("cryptencrypt")], "crypto");
        assert_eq!(CATEGORIES[category("openservicew")], "service");
        assert_eq!(CATEGORIES[category("ldrloaddll")], "loader");
        assert_eq!(CATEGORIES[category("ntdelayexecution")], "sync");
        assert_eq!(CATEGORIES[category("findwindowa")], "ui");
        assert_eq!(CATEGORIES[category("somethingunheardof")], "other");
    }

    #[test]
    fn profile_features_have_the_documented_values_and_names() {
        let docs = vec![
            vec!["ntcreatefile", "regopenkeyexw", "connect"],
            vec!["ntcreatefile", "regopenkeyexw"],
            vec!["rare"],
        ];
        let space = ProfileSpace::fit(&docs, 2, 10, 10);
        assert_eq!(space.apis, ["ntcreatefile", "regopenkeyexw"]);
        assert_eq!(space.bigrams, [["ntcreatefile".to_owned(), "regopenkeyexw".to_owned()]]);
        let row = space.transform(&["connect", "regopenkeyexw", "ntcreatefile", "regopenkeyexw"]);
        assert_eq!(row.len(), space.dimension());
        // First-call positions: ntcreatefile at 2 of 4, regopenkeyexw at 1 of 4.
        assert_eq!(&row[..2], &[0.5, 0.25]);
        assert_eq!(row[2], 1.0, "the bigram ntcreatefile > regopenkeyexw occurs");
        let k = CATEGORIES.len();
        let shares = &row[3..3 + k];
        assert!(
            (shares[0] - 0.5).abs() < 1e-12
                && (shares[1] - 0.25).abs() < 1e-12
                && (shares[4] - 0.25).abs() < 1e-12
        );
        let absent = space.transform(&["rare"]);
        assert!(absent[0].is_nan() && absent[1].is_nan() && absent[2] == 0.0);
        let last = space.dimension() - 1;
        assert_eq!(space.feature_name(0), "ntcreatefile [first-call position]");
        assert_eq!(space.feature_name(2), "ntcreatefile > regopenkeyexw");
        assert_eq!(space.feature_name(3 + 4), "[share of network calls]");
        assert_eq!(space.feature_name(3 + 2 * k + 4 * k), "[network > registry transitions]");
        assert_eq!(space.feature_name(last), "[share of Ex names]");
        // Transitions are shares of all transitions: network > registry, registry > file, file > registry.
        assert!((row[3 + 2 * k + 4 * k] - 1.0 / 3.0).abs() < 1e-12);
    }
}
