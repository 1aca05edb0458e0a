//! `restart`: restart latency, from a worker's exit to its next start. The
//! worker stamps its start, lives 200 ms and exits 1, under `policy: always`
//! with no delay; floor: a `while true` bash loop running the same worker.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bins::Bins;
use crate::daemon::{dies_with_bench, Daemon, LogTo};
use crate::scratch::Scratch;
use crate::table::{median, p99, Row};
use crate::worker::{stamps, wait_stamps, worker};

fn gaps_ms(file: &Path) -> Vec<f64> {
    stamps(file)
        .windows(2)
        .filter(|w| w[0].0 == 'E' && w[1].0 == 'S')
        .map(|w| (w[1].1 - w[0].1) * 1000.0)
        .collect()
}

pub(crate) fn restart_latency(bins: &Bins, work: &Scratch, restarts: usize) -> Vec<Row> {
    let dir = work.sub("restart");
    let w = worker(&dir, true);
    let ours_file = dir.join("ours");
    let d = Daemon::start(
        bins,
        &dir,
        &serde_json::json!({"agents": [{"id": "w", "command": w, "args": [ours_file], "protocol": "none",
            "restart": {"policy": "always", "initial_delay_ms": 0, "max_restarts": 1_000_000, "window_ms": 1000}}]}),
        None,
        LogTo::File,
    );
    wait_stamps(&ours_file, restarts + 1, Duration::from_secs(120));
    d.stop();
    let floor_file = dir.join("floor");
    let mut sh = dies_with_bench(&mut Command::new("bash"))
        .args([
            "-c",
            &format!(
                "while true; do {} {}; done",
                w.display(),
                floor_file.display()
            ),
        ])
        .process_group(0)
        .spawn()
        .expect("bash");
    wait_stamps(&floor_file, restarts + 1, Duration::from_secs(120));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::killpg(sh.id() as libc::pid_t, libc::SIGKILL);
    }
    let _ = sh.wait();
    let (mut ours, mut floor) = (gaps_ms(&ours_file), gaps_ms(&floor_file));
    vec![Row {
        name: "restart latency (exit → next start)",
        unit: "ms",
        ours: median(&mut ours),
        ours_p99: Some(p99(&mut ours)),
        floor: Some(median(&mut floor)),
        note: format!("{} restarts; floor: bash while-loop", ours.len()),
    }]
}
