//! Signal handling, like the real CLI: TERM → 143 (unless ignored), HUP → 129, QUIT → 131,
//! INT → 0 in stream-json mode (aborting a running task first), deferred in one-shot mode. Also
//! the process-wide task state that SIGINT and the control `interrupt` act on.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::json::obj;
use crate::output::{exit_now, pid, record};

/// True in `--input-format stream-json` mode (SIGINT exits there instead of being deferred).
pub(crate) static STREAM_MODE: AtomicBool = AtomicBool::new(false);
/// Number of the task being run, 0 when idle.
pub(crate) static CURRENT_TASK: AtomicU64 = AtomicU64::new(0);
/// Number of the task that must abort (interrupt); compared with the running task's number.
pub(crate) static ABORT_TASK: AtomicU64 = AtomicU64::new(0);
/// Set by SIGINT in stream mode: the worker must not start another task.
pub(crate) static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "TERM",
        SIGINT => "INT",
        SIGHUP => "HUP",
        SIGQUIT => "QUIT",
        _ => "OTHER",
    }
}

/// Handles TERM/INT/HUP/QUIT on a dedicated thread, like the real CLI (SIGPIPE stays ignored, as
/// the Rust runtime sets it up, so a closed stdout gives EPIPE instead of killing us).
pub(crate) fn install_signals(ignore_sigterm: bool) {
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT]) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "fake-claude: cannot install signal handlers: {e}"
            );
            return;
        }
    };
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                record(obj! {"event": "signal", "signal": signal_name(sig), "pid": pid()});
                match sig {
                    SIGTERM if ignore_sigterm => {}
                    SIGTERM => exit_now(143),
                    SIGHUP => exit_now(129),
                    SIGQUIT => exit_now(131),
                    SIGINT if STREAM_MODE.load(Ordering::SeqCst) => on_stream_sigint(),
                    // One-shot mode: SIGINT is deferred (the task runs to its normal end).
                    _ => {}
                }
            }
        });
    if let Err(e) = spawned {
        let _ = writeln!(io::stderr(), "fake-claude: cannot start signal thread: {e}");
    }
}

/// SIGINT in stream-json mode: exit 0; a running task is aborted first (given up to 2 s to print
/// its aborted `result`).
fn on_stream_sigint() -> ! {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let running = CURRENT_TASK.load(Ordering::SeqCst);
    if running != 0 {
        ABORT_TASK.store(running, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while CURRENT_TASK.load(Ordering::SeqCst) == running && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
    exit_now(0)
}
