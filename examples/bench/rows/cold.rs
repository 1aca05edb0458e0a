//! `cold`: cold start. A daemon starting N plain agents until all have
//! started (floor: a bash loop starting them with `&`), and N fake-claude
//! agents until all have answered `initialize`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bins::Bins;
use crate::daemon::{dies_with_bench, Daemon, LogTo};
use crate::scratch::Scratch;
use crate::table::{median, Row};
use crate::worker::{stamps, wait_stamps, worker};

pub(crate) fn cold_start(bins: &Bins, work: &Scratch, n: usize, runs: usize) -> Vec<Row> {
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    let mut claude = Vec::new();
    for run in 0..runs {
        let dir = work.sub(&format!("cold-{run}"));
        let w = worker(&dir, false);
        let agents: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("w{i}"), "command": w, "args": [dir.join(format!("s{i}"))], "protocol": "none"}))
            .collect();
        let t0 = now_epoch();
        let d = Daemon::start(
            bins,
            &dir,
            &serde_json::json!({"agents": agents}),
            None,
            LogTo::Pipe,
        );
        let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("s{i}"))).collect();
        for f in &files {
            wait_stamps(f, 1, Duration::from_secs(60));
        }
        let last = files
            .iter()
            .filter_map(|f| stamps(f).first().map(|s| s.1))
            .fold(0.0, f64::max);
        ours.push((last - t0) * 1000.0);
        d.stop();

        let fdir = work.sub(&format!("cold-floor-{run}"));
        let script: String = (0..n)
            .map(|i| {
                format!(
                    "{} {} & ",
                    w.display(),
                    fdir.join(format!("s{i}")).display()
                )
            })
            .collect();
        let t0 = now_epoch();
        let mut sh = dies_with_bench(&mut Command::new("bash"))
            .args(["-c", &format!("{script} wait")])
            .process_group(0)
            .spawn()
            .expect("bash");
        let files: Vec<PathBuf> = (0..n).map(|i| fdir.join(format!("s{i}"))).collect();
        for f in &files {
            wait_stamps(f, 1, Duration::from_secs(60));
        }
        let last = files
            .iter()
            .filter_map(|f| stamps(f).first().map(|s| s.1))
            .fold(0.0, f64::max);
        floor.push((last - t0) * 1000.0);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::killpg(sh.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = sh.wait();

        let cdir = work.sub(&format!("cold-claude-{run}"));
        let agents: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("c{i}"), "command": bins.fake}))
            .collect();
        let t0 = Instant::now();
        let d = Daemon::start(
            bins,
            &cdir,
            &serde_json::json!({"agents": agents}),
            None,
            LogTo::Pipe,
        );
        d.wait_for("initializing -> idle", n, Duration::from_secs(60));
        claude.push(t0.elapsed().as_secs_f64() * 1000.0);
        d.stop();
    }
    vec![
        Row {
            name: "cold start, plain agents (all started)",
            unit: "ms",
            ours: median(&mut ours),
            ours_p99: None,
            floor: Some(median(&mut floor)),
            note: format!("{n} agents, median of {runs} runs; floor: bash loop with &"),
        },
        Row {
            name: "cold start, fake-claude agents (all idle)",
            unit: "ms",
            ours: median(&mut claude),
            ours_p99: None,
            floor: None,
            note: format!("{n} agents until initialize answered, median of {runs} runs"),
        },
    ]
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
