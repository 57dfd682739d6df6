//! SPEC §2.4's system overload: CPU, memory or a queue above a share (0.8) of its capacity.
//! [`SystemLoad`] measures this host's CPU (busy time between two samples, every core) and
//! memory (what is not available, as the kernel counts it) from `/proc`; queues are measured
//! by the services that own them and handed in as [`Load`]s.

use serde_json::json;

use crate::alert::{Alert, Rule, Severity};
use crate::settings::OverloadRule;

/// How full one resource is.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// `cpu`, `memory`, or a queue's name (`network.ingest_queue`…).
    pub resource: String,
    /// The share of its capacity in use, 0 to 1.
    pub used: f64,
}

/// The alert of a resource above the rule's threshold.
pub fn overload(rule: &OverloadRule, load: &Load) -> Option<Alert> {
    if !rule.enabled || !load.used.is_finite() || load.used < rule.threshold {
        return None;
    }
    let severity = if load.used >= 0.95 { Severity::Critical } else { Severity::Warning };
    let summary = format!(
        "{} at {:.0} % of its capacity (threshold {:.0} %)",
        load.resource,
        load.used * 100.0,
        rule.threshold * 100.0
    );
    Some(Alert::new(Rule::Overload, &load.resource, severity, summary).with_details(json!({
        "resource": load.resource,
        "used": load.used,
        "threshold": rule.threshold,
    })))
}

/// This host's CPU and memory, from `/proc`.
#[derive(Debug, Default)]
pub struct SystemLoad {
    /// (busy, total) jiffies at the last sample.
    last_cpu: Option<(u64, u64)>,
}

impl SystemLoad {
    pub fn new() -> SystemLoad {
        SystemLoad::default()
    }

    /// CPU busy share since the last call (none on the first) and memory in use. Where `/proc`
    /// cannot be read (another platform), nothing.
    pub fn sample(&mut self) -> Vec<Load> {
        let mut loads = Vec::new();
        if let Some((busy, total)) =
            std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(cpu_jiffies)
        {
            if let Some((last_busy, last_total)) = self.last_cpu
                && total > last_total
            {
                let used = busy.saturating_sub(last_busy) as f64 / (total - last_total) as f64;
                loads.push(Load { resource: "cpu".into(), used: used.clamp(0.0, 1.0) });
            }
            self.last_cpu = Some((busy, total));
        }
        if let Some(used) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(memory_used) {
            loads.push(Load { resource: "memory".into(), used });
        }
        loads
    }
}

/// (busy, total) jiffies of the `cpu` line of /proc/stat: idle and iowait are not busy.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user and nice).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The share of memory not available (MemAvailable of MemTotal) in /proc/meminfo.
fn memory_used(meminfo: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        let line = meminfo.lines().find(|line| line.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (total, available) = (field("MemTotal:")?, field("MemAvailable:")?);
    (total > 0.0).then(|| (1.0 - available / total).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(cpu_jiffies(stat), Some((150, 1000)));
        let meminfo = "MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(memory_used(meminfo), Some(0.75));
        assert_eq!(memory_used("nonsense"), None);
    }

    #[test]
    fn this_host_is_measured_and_a_full_resource_raises() {
        let mut load = SystemLoad::new();
        let first = load.sample();
        if cfg!(target_os = "linux") {
            assert!(first.iter().any(|load| load.resource == "memory" && (0.0..=1.0).contains(&load.used)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(load.sample().iter().any(|load| load.resource == "cpu"));
        }
        let rule = OverloadRule::default();
        assert_eq!(overload(&rule, &Load { resource: "cpu".into(), used: 0.5 }), None);
        let alert = overload(&rule, &Load { resource: "network.ingest_queue".into(), used: 0.85 }).unwrap();
        assert_eq!((alert.key.as_str(), alert.severity), ("network.ingest_queue", Severity::Warning));
    }
}
