//! A hard bound on a client command's run time.
//!
//! Whatever blocks underneath — a NATS client stuck in a reconnect, a
//! daemon that vanished mid-answer — the command ends in time with one
//! clear line and the exit code its callers page on. It is one `setitimer`
//! and a `SIGALRM` handler rather than a watcher thread: a thread costs
//! ~0.1 ms to start on the path of every `send` (measured with `perf
//! trace`), an interval timer costs one system call.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// What a command is doing, named in the line the bound writes.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum Phase {
    Starting,
    Connecting,
    Publishing,
    Flushing,
    Waiting,
}

const PHASE_NAMES: [&str; 5] = [
    "starting",
    "connecting",
    "publishing",
    "confirming the publish",
    "waiting for answers",
];

static PHASE: AtomicU8 = AtomicU8::new(Phase::Starting as u8);

/// Records what the command is doing now.
pub fn phase(p: Phase) {
    PHASE.store(p as u8, Ordering::SeqCst);
}

/// What the handler writes, where, and the code it exits with.
struct Armed {
    fd: libc::c_int,
    line: Vec<u8>,
    code: libc::c_int,
}

/// Set once, before the timer is armed, and never changed: the handler
/// only reads it.
static ARMED: OnceLock<Armed> = OnceLock::new();

extern "C" fn on_alarm(_: libc::c_int) {
    let code = match ARMED.get() {
        Some(a) => {
            // Commands that do not record phases get the plain line.
            let phase = match PHASE.load(Ordering::SeqCst) {
                0 => None,
                n => PHASE_NAMES.get(usize::from(n)).copied(),
            };
            // SAFETY: `write` and `_exit` are async-signal-safe; `a.line`
            // (which ends in a newline) is immutable once set and, like
            // `phase`, outlives the process.
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

/// Where the line goes.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Ends the process after `bound`, writing `line` (a newline is added) to
/// `stream` and exiting with `code`. Call at most once per process; a
/// second call leaves the first bound in place and returns false.
pub fn arm(bound: Duration, stream: Stream, line: &str, code: u8) -> bool {
    let fd = match stream {
        Stream::Stdout => libc::STDOUT_FILENO,
        Stream::Stderr => libc::STDERR_FILENO,
    };
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    let armed = Armed {
        fd,
        line: bytes,
        code: libc::c_int::from(code),
    };
    if ARMED.set(armed).is_err() {
        return false;
    }
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler
    // is an `extern "C" fn(c_int)` that only calls async-signal-safe
    // functions.
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
