//! Where a benchmarked server's time went: `sentinel bench server --compare` reads each
//! server's `malware_request_stage_seconds` and `malware_request_seconds` from its `/metrics`
//! (open on its loopback listener) before and after the timed requests of a size, and reports
//! the mean time of each stage over those requests. A server without these series (an earlier
//! build given as a baseline) reports none.

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

/// Sum of seconds and count of each series, by stage (and [`REQUEST`] for the whole request).
#[derive(Debug, Default, Clone)]
pub(super) struct StageTotals(BTreeMap<String, (f64, u64)>);

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
            let key = match name {
                "malware_request_stage_seconds_sum" | "malware_request_stage_seconds_count" => {
                    label_value(label, "stage")
                }
                "malware_request_seconds_sum" | "malware_request_seconds_count" => {
                    label_value(label, "command").map(|_| REQUEST)
                }
                _ => None,
            };
            let Some(key) = key else { continue };
            let entry: &mut (f64, u64) = totals.entry(key.to_owned()).or_default();
            match name.ends_with("_sum") {
                true => entry.0 += value,
                // Counts are integers written as such.
                false => entry.1 += value as u64,
            }
        }
        StageTotals(totals)
    }

    /// Mean milliseconds per observation of each stage between `before` and `self`, as JSON
    /// (`null` for a stage not observed between them).
    pub fn mean_ms_since(&self, before: &StageTotals) -> serde_json::Value {
        let mut means = serde_json::Map::new();
        for stage in STAGES.iter().chain(&[REQUEST]) {
            let (sum, count) = self.0.get(*stage).copied().unwrap_or_default();
            let (sum_before, count_before) = before.0.get(*stage).copied().unwrap_or_default();
            let count = count.saturating_sub(count_before);
            let mean = (count > 0).then(|| (sum - sum_before) / count as f64 * 1000.0);
            means.insert((*stage).to_owned(), json!(mean));
        }
        let after_receive = match (means["receive"].as_f64(), means[REQUEST].as_f64()) {
            (Some(receive), Some(request)) => Some(request - receive),
            _ => None,
        };
        means.insert(AFTER_RECEIVE.to_owned(), json!(after_receive));
        serde_json::Value::Object(means)
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
}
