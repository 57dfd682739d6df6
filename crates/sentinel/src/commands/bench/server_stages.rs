//! Where a benchmarked server's time went: `sentinel bench server --compare` reads each
//! server's `malware_request_stage_seconds` and `malware_request_seconds` from its `/metrics`
//! (open on its loopback listener) before and after the timed requests of a size, and reports
//! the mean time of each stage over those requests, and how many of them took longer than
//! [`SLOW_SECONDS`] in each stage (from the histograms' buckets: where the tail comes from). A
//! server without these series (an earlier build given as a baseline) reports none.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use serde_json::json;

use crate::commands::table::{self, Style};

/// The stages in pipeline order, as the server names them, then the whole request.
const STAGES: [&str; 9] =
    ["receive", "hash", "sample_write", "static", "list", "record", "answer", "dynamic", "virustotal"];
const REQUEST: &str = "request";
/// The request's mean less its receiving's: how long the answer takes once the last byte is in.
const AFTER_RECEIVE: &str = "after_receive";
/// Observations slower than this are counted apart: the bound of one of the server's buckets.
const SLOW_SECONDS: &str = "0.005";

/// One series' totals: seconds, observations, and observations within [`SLOW_SECONDS`] (when
/// the series has that bucket).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    sum: f64,
    count: u64,
    within_slow: Option<u64>,
}

/// The totals of each series, by stage (and [`REQUEST`] for the whole request).
#[derive(Debug, Default, Clone)]
pub(super) struct StageTotals(BTreeMap<String, Totals>);

impl StageTotals {
    /// Reads the totals from the server's metrics at `http`.
    pub async fn scrape(client: &reqwest::Client, http: SocketAddr) -> anyhow::Result<StageTotals> {
        let url = format!("http://{http}/metrics");
        let response = client.get(&url).send().await.with_context(|| format!("cannot read {url}"))?;
        let text = response.error_for_status().with_context(|| format!("cannot read {url}"))?.text().await?;
        Ok(StageTotals::parse(&text))
    }

    fn parse(exposition: &str) -> StageTotals {
        let mut totals = BTreeMap::new();
        for line in exposition.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let Some((name, label)) = series.split_once('{') else { continue };
            let key = match name.strip_prefix("malware_request_") {
                Some("stage_seconds_sum" | "stage_seconds_count" | "stage_seconds_bucket") => {
                    label_value(label, "stage")
                }
                Some("seconds_sum" | "seconds_count" | "seconds_bucket") => {
                    label_value(label, "command").map(|_| REQUEST)
                }
                _ => None,
            };
            let Some(key) = key else { continue };
            let entry = totals.entry(key.to_owned()).or_insert_with(Totals::default);
            // Counts are integers written as such.
            if name.ends_with("_sum") {
                entry.sum += value;
            } else if name.ends_with("_count") {
                entry.count += value as u64;
            } else if label_value(label, "le") == Some(SLOW_SECONDS) {
                *entry.within_slow.get_or_insert(0) += value as u64;
            }
        }
        StageTotals(totals)
    }

    /// Mean milliseconds per observation of each stage between `before` and `self`, as JSON
    /// (`null` for a stage not observed between them).
    pub fn mean_ms_since(&self, before: &StageTotals) -> serde_json::Value {
        let mut means = serde_json::Map::new();
        for stage in STAGES.iter().chain(&[REQUEST]) {
            let (now, then) = self.since(before, stage);
            let count = now.count.saturating_sub(then.count);
            let mean = (count > 0).then(|| (now.sum - then.sum) / count as f64 * 1000.0);
            means.insert((*stage).to_owned(), json!(mean));
        }
        let after_receive = match (means["receive"].as_f64(), means[REQUEST].as_f64()) {
            (Some(receive), Some(request)) => Some(request - receive),
            _ => None,
        };
        means.insert(AFTER_RECEIVE.to_owned(), json!(after_receive));
        serde_json::Value::Object(means)
    }

    /// How many observations of each stage between `before` and `self` took longer than
    /// [`SLOW_SECONDS`], as JSON (only the stages with some; none of a server whose histograms
    /// have other buckets).
    pub fn slow_since(&self, before: &StageTotals) -> serde_json::Value {
        let mut slow = serde_json::Map::new();
        for stage in STAGES.iter().chain(&[REQUEST]) {
            let (now, then) = self.since(before, stage);
            let Some(within_now) = now.within_slow else { continue };
            let count = now.count.saturating_sub(then.count);
            let within = within_now.saturating_sub(then.within_slow.unwrap_or(0));
            if count > within {
                slow.insert((*stage).to_owned(), json!(count - within));
            }
        }
        serde_json::Value::Object(slow)
    }

    /// The totals of `stage` now and in `before`.
    fn since(&self, before: &StageTotals, stage: &str) -> (Totals, Totals) {
        (self.0.get(stage).copied().unwrap_or_default(), before.0.get(stage).copied().unwrap_or_default())
    }
}

/// The value of `label` in a Prometheus label set (`a="x",b="y"}`).
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.trim_end_matches('}').split(',').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == label).then(|| value.trim_matches('"'))
    })
}

/// Prints the stage table of the rows that have stage times (`row["stages"]`), with the
/// columns of the stages some row observed.
pub(super) fn print(rows: &[serde_json::Value]) {
    let observed: Vec<&str> = STAGES
        .iter()
        .chain(&[REQUEST, AFTER_RECEIVE])
        .copied()
        .filter(|stage| rows.iter().any(|row| !row["stages"][*stage].is_null()))
        .collect();
    if observed.is_empty() {
        return;
    }
    println!(
        "Mean ms per request of each stage, from the servers' malware_request_stage_seconds \
         (stages overlap: static runs beside hash and sample_write; request = first byte to answer written; \
         after_receive = request - receive)"
    );
    let headers: Vec<&str> = ["size KiB", "server"].into_iter().chain(observed.iter().copied()).collect();
    let right: Vec<usize> = std::iter::once(0).chain(2..headers.len()).collect();
    let mut table = table::new(Style::Markdown, &headers, &right);
    for row in rows.iter().filter(|row| !row["stages"].is_null()) {
        let mut cells = vec![row["size_kib"].to_string(), row["server"].as_str().unwrap_or("").to_owned()];
        cells.extend(observed.iter().map(|stage| match row["stages"][*stage].as_f64() {
            Some(mean) => format!("{mean:.3}"),
            None => "-".to_owned(),
        }));
        table.add_row(cells);
    }
    println!("{table}");
    let slow: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let counts = row["slow_stages"].as_object().filter(|counts| !counts.is_empty())?;
            let counts: Vec<String> =
                counts.iter().map(|(stage, count)| format!("{stage} {count}")).collect();
            Some(format!(
                "- {} KiB, {}: {}",
                row["size_kib"],
                row["server"].as_str().unwrap_or(""),
                counts.join(", ")
            ))
        })
        .collect();
    if !slow.is_empty() {
        println!(
            "Timed requests with a stage over {} ms, by stage:",
            SLOW_SECONDS.parse::<f64>().unwrap_or(0.0) * 1000.0
        );
        slow.iter().for_each(|line| println!("{line}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_in(means: &serde_json::Value, stage: &str, expected: f64) {
        let mean = means[stage].as_f64().unwrap();
        assert!((mean - expected).abs() < 1e-9, "{stage}: {mean} against {expected}");
    }

    #[test]
    fn means_are_taken_over_the_observations_between_two_scrapes() {
        let before = StageTotals::parse(
            "# HELP malware_request_stage_seconds Time.\n\
             malware_request_stage_seconds_sum{stage=\"hash\"} 0.010\n\
             malware_request_stage_seconds_count{stage=\"hash\"} 10\n\
             malware_request_stage_seconds_bucket{le=\"0.001\",stage=\"hash\"} 10\n\
             malware_request_seconds_sum{command=\"static_analyse\"} 0.5\n\
             malware_request_seconds_count{command=\"static_analyse\"} 10\n",
        );
        let after = StageTotals::parse(
            "malware_request_stage_seconds_sum{stage=\"hash\"} 0.016\n\
             malware_request_stage_seconds_count{stage=\"hash\"} 20\n\
             malware_request_stage_seconds_sum{stage=\"record\"} 0.003\n\
             malware_request_stage_seconds_count{stage=\"record\"} 10\n\
             malware_request_seconds_sum{command=\"static_analyse\"} 0.52\n\
             malware_request_seconds_count{command=\"static_analyse\"} 20\n\
             malware_requests_total{command=\"static_analyse\",outcome=\"yes\"} 20\n",
        );
        let means = after.mean_ms_since(&before);
        close_in(&means, "hash", 0.6);
        close_in(&means, "record", 0.3);
        close_in(&means, REQUEST, 2.0);
        assert!(means["receive"].is_null());
        assert!(means[AFTER_RECEIVE].is_null());
        let received = StageTotals::parse(
            "malware_request_stage_seconds_sum{stage=\"receive\"} 0.005\n\
             malware_request_stage_seconds_count{stage=\"receive\"} 10\n\
             malware_request_seconds_sum{command=\"static_analyse\"} 0.52\n\
             malware_request_seconds_count{command=\"static_analyse\"} 20\n",
        );
        let means = received.mean_ms_since(&before);
        close_in(&means, "receive", 0.5);
        close_in(&means, AFTER_RECEIVE, 1.5);
    }

    #[test]
    fn slow_observations_are_those_past_the_five_millisecond_bucket_between_two_scrapes() {
        let before = StageTotals::parse(
            "malware_request_stage_seconds_bucket{stage=\"record\",le=\"0.002\"} 8\n\
             malware_request_stage_seconds_bucket{stage=\"record\",le=\"0.005\"} 9\n\
             malware_request_stage_seconds_count{stage=\"record\"} 10\n\
             malware_request_seconds_bucket{command=\"static_analyse\",le=\"0.005\"} 10\n\
             malware_request_seconds_count{command=\"static_analyse\"} 10\n",
        );
        let after = StageTotals::parse(
            "malware_request_stage_seconds_bucket{stage=\"record\",le=\"0.002\"} 15\n\
             malware_request_stage_seconds_bucket{stage=\"record\",le=\"0.005\"} 17\n\
             malware_request_stage_seconds_bucket{stage=\"record\",le=\"+Inf\"} 20\n\
             malware_request_stage_seconds_count{stage=\"record\"} 20\n\
             malware_request_stage_seconds_bucket{stage=\"hash\",le=\"0.005\"} 20\n\
             malware_request_stage_seconds_count{stage=\"hash\"} 20\n\
             malware_request_seconds_bucket{command=\"static_analyse\",le=\"0.005\"} 18\n\
             malware_request_seconds_count{command=\"static_analyse\"} 20\n",
        );
        // record: 10 more, 8 of them within 5 ms; the requests: 10 more, 8 within.
        assert_eq!(after.slow_since(&before), json!({"record": 2, "request": 2}));
        // Histograms without a 5 ms bucket say nothing of slow requests.
        let other_buckets = StageTotals::parse(
            "malware_request_stage_seconds_bucket{stage=\"record\",le=\"0.004\"} 20\n\
             malware_request_stage_seconds_count{stage=\"record\"} 30\n",
        );
        assert_eq!(other_buckets.slow_since(&StageTotals::default()), json!({}));
    }
}
