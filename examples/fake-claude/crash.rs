//! Simulated crashes (`FAKE_CLAUDE_CRASH_AFTER_TASKS`, `[[fake:crash]]`): exit 1, SIGKILL,
//! abort, or half a JSON line. A crash never prints a `result`.

use std::io::{self, Write};
use std::sync::atomic::Ordering;

use crate::json::{obj, to_line, J};
use crate::knobs::CrashMode;
use crate::output::{exit_now, hang_forever, pid, record, OUT, STDOUT_BROKEN};
use crate::session::Session;

impl Session {
    /// Simulated crash (no `result`). `next` is the line that would have come next; the
    /// `partial-line` mode prints its first half without a newline.
    pub(crate) fn crash(&self, n: u64, mode: CrashMode, next: &J) -> ! {
        record(obj! {"event": "crash", "n": n, "mode": mode.name(), "pid": pid()});
        match mode {
            CrashMode::Exit1 => exit_now(1),
            CrashMode::Sigkill => {
                let me = libc::pid_t::try_from(pid()).unwrap_or(0);
                // SAFETY: kill() on our own pid with a valid signal number; no memory involved.
                unsafe {
                    libc::kill(me, libc::SIGKILL);
                }
                hang_forever()
            }
            CrashMode::Abort => {
                // No core file in the test's cwd: the SIGABRT death is what matters.
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: setrlimit() reads the valid, initialised struct we pass by pointer.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                }
                std::process::abort()
            }
            CrashMode::PartialLine => {
                if !STDOUT_BROKEN.load(Ordering::SeqCst) {
                    let line = to_line(next);
                    let half = &line.as_bytes()[..line.len() / 2];
                    let _guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(half).and_then(|()| out.flush());
                }
                exit_now(1)
            }
        }
    }
}
