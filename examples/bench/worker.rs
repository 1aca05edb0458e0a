//! The bash worker that the restart, cold start and memory rows supervise,
//! and the start stamps it leaves behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bash worker: stamps "S <t>" (monotonic enough: $EPOCHREALTIME, no
/// fork), then either sleeps 200 ms and exits 1, or `exec`s a long sleep.
pub(crate) fn worker(dir: &Path, crash: bool) -> PathBuf {
    let path = dir.join(if crash { "crash.sh" } else { "idle.sh" });
    let body = if crash {
        "#!/bin/bash\necho \"S $EPOCHREALTIME\" >> \"$1\"\nsleep 0.2\necho \"E $EPOCHREALTIME\" >> \"$1\"\nexit 1\n"
    } else {
        "#!/bin/bash\necho \"S $EPOCHREALTIME\" >> \"$1\"\nexec sleep 100000\n"
    };
    std::fs::write(&path, body).expect("worker script");
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    path
}

pub(crate) fn stamps(file: &Path) -> Vec<(char, f64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.chars().next()?, v.parse().ok()?))
        })
        .collect()
}

/// Waits until `file` has `n` lines starting with `S`.
pub(crate) fn wait_stamps(file: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while stamps(file).iter().filter(|s| s.0 == 'S').count() < n {
        assert!(
            Instant::now() < deadline,
            "bench: {n} starts not seen in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
