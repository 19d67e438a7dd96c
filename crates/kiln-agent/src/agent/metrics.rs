//! The machine's resource use, sent with heartbeats: CPU (from `/proc/stat` deltas),
//! memory (`/proc/meminfo`) and free disk in the work directory (`statvfs`).

use std::path::Path;

use serde_json::{Value, json};

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    last_cpu: Option<(u64, u64)>,
}

fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = values.get(3)? + values.get(4).unwrap_or(&0);
    Some((values.iter().sum(), idle))
}

fn meminfo(field: &str, text: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

impl Metrics {
    pub(crate) fn sample(&mut self, work_dir: &Path) -> Value {
        let mut cpu_percent = None;
        if let Some((total, idle)) = cpu_times() {
            if let Some((last_total, last_idle)) = self.last_cpu {
                let busy = (total - last_total).saturating_sub(idle - last_idle);
                let span = total.saturating_sub(last_total).max(1);
                cpu_percent = Some((busy as f64 * 1000.0 / span as f64).round() / 10.0);
            }
            self.last_cpu = Some((total, idle));
        }
        let memory = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let total = meminfo("MemTotal:", &memory);
        let available = meminfo("MemAvailable:", &memory);
        let disk = nix::sys::statvfs::statvfs(work_dir).ok();
        let disk_free = disk
            .as_ref()
            .map(|stat| stat.blocks_available() * stat.fragment_size());
        let disk_total = disk
            .as_ref()
            .map(|stat| stat.blocks() * stat.fragment_size());
        json!({
            "cpuPercent": cpu_percent,
            "memoryBytes": total.zip(available).map(|(t, a)| t.saturating_sub(a)),
            "memoryTotalBytes": total,
            "diskFreeBytes": disk_free,
            "diskTotalBytes": disk_total,
        })
    }
}
