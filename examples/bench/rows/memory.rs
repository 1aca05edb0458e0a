//! `memory`: the daemon's resident set with a small and a large fleet of
//! idle children, and its threads per child.

use std::time::Duration;

use crate::bins::Bins;
use crate::daemon::{Daemon, LogTo};
use crate::scratch::Scratch;
use crate::table::Row;
use crate::worker::worker;

fn status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn memory(bins: &Bins, work: &Scratch, sizes: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in sizes {
        let dir = work.sub(&format!("mem-{n}"));
        let w = worker(&dir, false);
        let agents: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("m{i}"), "command": w, "args": [dir.join(format!("s{i}"))], "protocol": "none"}))
            .collect();
        let d = Daemon::start(
            bins,
            &dir,
            &serde_json::json!({"agents": agents}),
            None,
            LogTo::Pipe,
        );
        d.wait_for("initializing -> idle", n, Duration::from_secs(120));
        // Let the first tracker scan and the startup settle.
        std::thread::sleep(Duration::from_secs(3));
        let rss = status_kb(d.pid(), "VmRSS:") / 1024.0;
        let hwm = status_kb(d.pid(), "VmHWM:") / 1024.0;
        let threads = std::fs::read_dir(format!("/proc/{}/task", d.pid())).map_or(0, |r| r.count());
        d.stop();
        rows.push(Row {
            name: if n == sizes[0] { "daemon RSS, small fleet" } else { "daemon RSS, large fleet" },
            unit: "MB",
            ours: rss,
            ours_p99: None,
            floor: None,
            note: format!(
                "{n} children: VmRSS {rss:.2} MB, VmHWM {hwm:.2} MB, {threads} threads ({:.1} per child)",
                threads as f64 / n as f64
            ),
        });
    }
    rows
}
