//! A hard bound on the process's run time: one `setitimer` and a `SIGALRM`
//! handler that writes a line and exits.
//!
//! A watcher thread would do the same, but starting a thread costs about
//! 0.1 ms on the path of every `send` (measured with `perf trace`), and an
//! interval timer costs one system call. The handler may only make
//! async-signal-safe calls, so everything it writes is prepared when the
//! bound is armed, and the one thing that changes afterwards, the phase, is
//! an atomic index into a table fixed at arming.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// What the handler writes, where, and the code it exits with.
struct Armed {
    fd: libc::c_int,
    /// Ends in a newline.
    line: Vec<u8>,
    code: libc::c_int,
    /// Names of the phases [`set_phase`] selects; index 0 means "say
    /// nothing".
    phases: &'static [&'static str],
}

/// Set once, before the timer is armed, and never changed: the handler only
/// reads it.
static ARMED: OnceLock<Armed> = OnceLock::new();

static PHASE: AtomicU8 = AtomicU8::new(0);

/// Records what the process is doing now, named in the line if the bound
/// fires (an index into the `phases` given to [`arm`]).
pub fn set_phase(phase: u8) {
    PHASE.store(phase, Ordering::SeqCst);
}

extern "C" fn on_alarm(_: libc::c_int) {
    let code = match ARMED.get() {
        Some(a) => {
            let phase = match PHASE.load(Ordering::SeqCst) {
                0 => None,
                n => a.phases.get(usize::from(n)).copied(),
            };
            // SAFETY: `write` and `_exit` are async-signal-safe; `a.line`
            // is immutable once set and, like the phase names, outlives
            // the process.
            unsafe {
                libc::write(a.fd, a.line.as_ptr().cast(), a.line.len() - 1);
                let parts = match phase {
                    Some(p) => [" (while ", p, ")\n"],
                    None => ["", "", "\n"],
                };
                for part in parts {
                    libc::write(a.fd, part.as_ptr().cast(), part.len());
                }
            }
            a.code
        }
        None => 70,
    };
    // SAFETY: as above; nothing runs after `_exit`.
    unsafe { libc::_exit(code) }
}

/// Ends the process after `bound`, writing `line` (a newline is added, and
/// the current phase before it) to `fd` and exiting with `code`. Call at
/// most once per process; a second call leaves the first bound in place and
/// returns false.
pub fn arm(
    bound: Duration,
    fd: libc::c_int,
    line: &str,
    code: u8,
    phases: &'static [&'static str],
) -> bool {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    let armed = Armed {
        fd,
        line: bytes,
        code: libc::c_int::from(code),
        phases,
    };
    if ARMED.set(armed).is_err() {
        return false;
    }
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is
    // an `extern "C" fn(c_int)` that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0 {
            return false;
        }
    }
    // A bound too long for the timer is no bound worth keeping.
    let secs = libc::time_t::try_from(bound.as_secs()).unwrap_or(libc::time_t::MAX);
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: secs,
            // At least 1 µs: an all-zero value would disarm the timer.
            tv_usec: libc::suseconds_t::from(bound.subsec_micros().max(u32::from(secs == 0))),
        },
    };
    // SAFETY: `timer` is a valid itimerval; the old value is not wanted.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) == 0 }
}
