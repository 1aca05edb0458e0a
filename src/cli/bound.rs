//! A hard bound on a client command's run time.
//!
//! Whatever blocks underneath — a NATS client stuck in a reconnect, a
//! daemon that vanished mid-answer — the command ends in time with one
//! clear line and the exit code its callers page on, naming what it was
//! doing when time ran out. The timer itself is `sys::alarm`.

use std::time::Duration;

use crate::sys::alarm;

/// What a command is doing, named in the line the bound writes.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub(super) enum Phase {
    Connecting = 1,
    Publishing,
    Flushing,
    Waiting,
}

/// The names of the phases, by their number; before the first phase is
/// recorded (0) the line names none.
const PHASE_NAMES: [&str; 5] = [
    "",
    "connecting",
    "publishing",
    "confirming the publish",
    "waiting for answers",
];

/// Records what the command is doing now.
pub(super) fn phase(p: Phase) {
    alarm::set_phase(p as u8);
}

/// Where the line goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// Ends the process after `bound`, writing `line` (a newline is added) to
/// `stream` and exiting with `code`. Call at most once per process; a
/// second call leaves the first bound in place and returns false.
pub(super) fn arm(bound: Duration, stream: Stream, line: &str, code: u8) -> bool {
    let fd = match stream {
        Stream::Stdout => libc::STDOUT_FILENO,
        Stream::Stderr => libc::STDERR_FILENO,
    };
    alarm::arm(bound, fd, line, code, &PHASE_NAMES)
}
