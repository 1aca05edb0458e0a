//! `spawn`: one spawn until exec'd through the daemon's clone path (the
//! library's `runtime::spawn`), against std's `posix_spawn` and std's fork
//! with a `pre_exec` hook.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::table::{median, p99, Row};

/// One spawn of `/bin/true`, until it has exec'd, three ways, in this
/// process (threads and a few MB mapped, like the daemon): the daemon's
/// clone path, std's `Command` forced to fork by a `pre_exec` hook (what
/// PDEATHSIG needed before), and std's `posix_spawn` path (no PDEATHSIG).
pub(crate) fn spawn_cost(n: usize) -> Vec<Row> {
    use mister_smith::sys::spawn;
    use std::os::unix::process::CommandExt;
    // Look like a daemon: some heap in use, some threads.
    let ballast = vec![1u8; 4 << 20];
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            })
        })
        .collect();
    let env = spawn::child_env([], &[]);
    let plan =
        spawn::Plan::new("/bin/true", &[], Path::new("/"), &env, false, Vec::new()).expect("plan");
    let ours = || {
        let t = Instant::now();
        let child = spawn::spawn(&plan).expect("spawn");
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let _ = mister_smith::sys::reap(child.pid);
        took
    };
    let std_spawn = |fork: bool| {
        let mut c = Command::new("/bin/true");
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if fork {
            // SAFETY: the hook makes one async-signal-safe call.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let t = Instant::now();
        let mut child = c.spawn().expect("spawn");
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let _ = child.wait();
        took
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        a.push(ours());
        b.push(std_spawn(true));
        c.push(std_spawn(false));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(ballast);
    let (m_b, m_c) = (median(&mut b), median(&mut c));
    vec![Row {
        name: "spawn until exec'd (the daemon's clone path)",
        unit: "ms",
        ours: median(&mut a),
        ours_p99: Some(p99(&mut a)),
        floor: Some(m_c),
        note: format!(
            "{n} spawns of /bin/true from a process with 8 threads and 4 MB in use; floor: std posix_spawn (no PDEATHSIG possible); std fork + pre_exec (what PDEATHSIG needed): {m_b:.3} ms"
        ),
    }]
}
