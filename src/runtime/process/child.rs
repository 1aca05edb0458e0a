//! A real child process as the supervisor holds it: its pid, its stdin
//! (written directly while the pipe has room, else through a writer thread,
//! so the supervisor never blocks on a child that does not read), and the
//! tail of its stderr.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::handle::{resource_usage, ChildHandle};
use crate::message::schemas::ResourceUsage;
use crate::sys;

/// How many stderr lines are kept per agent for diagnostics.
pub(crate) const STDERR_TAIL_LINES: usize = 20;

/// The last lines an agent wrote to stderr, shared between its io thread
/// and the supervisor.
pub(crate) type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// A started agent process.
pub(crate) struct RunningChild {
    pub(super) pid: u32,
    /// Lines for the child's stdin writer; dropping it closes stdin.
    pub(super) stdin: Option<Sender<Vec<u8>>>,
    /// The stdin pipe (non-blocking), written directly while the writer has
    /// nothing queued: one thread hand-off less on every task. Open for as
    /// long as `stdin` is `Some` (the writer keeps the pipe until then).
    pub(super) stdin_fd: Option<RawFd>,
    /// Lines handed to the writer and not yet fully written.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) stderr_tail: StderrTail,
    /// Dropped when the supervisor is done with the child: only then does
    /// the io thread reap it.
    pub(super) _reap: Sender<()>,
}

impl std::fmt::Debug for RunningChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningChild")
            .field("pid", &self.pid)
            .finish()
    }
}

impl ChildHandle for RunningChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Writes one line: directly when the pipe has room and nothing is
    /// queued, else through the writer thread, so the caller never blocks
    /// and lines stay in order. A line is dropped when stdin is closed.
    fn write_line(&self, mut line: Vec<u8>) -> bool {
        line.push(b'\n');
        let Some(tx) = &self.stdin else { return false };
        let mut rest: &[u8] = &line;
        if let (Some(fd), 0) = (self.stdin_fd, self.queued.load(Ordering::Acquire)) {
            while !rest.is_empty() {
                match sys::write_some(fd, rest) {
                    Ok(n) if n > 0 => rest = &rest[n..],
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The child closed its stdin: its exit will follow.
                    Err(_) => return false,
                }
            }
            if rest.is_empty() {
                return true;
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if tx.send(rest.to_vec()).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn close_stdin(&mut self) {
        self.stdin_fd = None;
        self.stdin = None;
    }

    fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    fn signal_group(&self, signal: i32) -> io::Result<()> {
        sys::killpg(self.pid, signal)
    }

    fn stderr_lines(&self) -> Vec<String> {
        match self.stderr_tail.lock() {
            Ok(t) => t.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    fn resource_usage(&self) -> Option<ResourceUsage> {
        resource_usage(self.pid)
    }
}

/// Writes queued lines to the child's (non-blocking) stdin, waiting for
/// room when the pipe is full, until the sender is dropped. After a write
/// error the rest is discarded, but the pipe stays open until the sender is
/// gone: the supervisor may still hold its fd. Dropping `pipe` closes
/// stdin.
pub(super) fn write_stdin(pipe: File, lines: &Receiver<Vec<u8>>, queued: &AtomicUsize) {
    let fd = pipe.as_raw_fd();
    let mut broken = false;
    for line in lines {
        let mut rest: &[u8] = &line;
        while !broken && !rest.is_empty() {
            match sys::write_some(fd, rest) {
                Ok(n) if n > 0 => rest = &rest[n..],
                Ok(_) => sys::wait_writable(fd),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sys::wait_writable(fd),
                Err(_) => broken = true,
            }
        }
        queued.fetch_sub(1, Ordering::AcqRel);
    }
    drop(pipe);
}
