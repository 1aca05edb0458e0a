//! A child's io thread: one thread per child polls its exit (a pidfd) and
//! both output pipes, so a flood never blocks a child and a quiet one costs
//! one sleeping thread.
//!
//! On exit it kills whatever is left of the process group while the
//! leader's pid is still reserved (it is a zombie until reaped, so the
//! group id cannot have been reused), drains the pipes briefly (a process
//! that left the group may hold them open), reports the exit, and reaps the
//! child once the supervisor has let go of it.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::child::{StderrTail, STDERR_TAIL_LINES};
use super::handle::{ChildMsg, ChildSink};
use crate::runtime::claude::Line;
use crate::sys;
use crate::sys::spawn::Spawned;
use crate::transport::lines::{Flow, LineRead, Lines};

/// Stdout lines longer than this are dropped (with a warning) rather than
/// held in memory. claude's lines can be large (whole files in tool
/// results), so the cap is generous.
pub(super) const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Stderr lines are cut to this length in the tail and the log.
const MAX_STDERR_LINE: usize = 4096;

/// At most this many stderr lines per second are logged per agent; the
/// rest are counted and reported, so a flood cannot flood the log.
const STDERR_LOG_PER_SEC: u32 = 50;

/// How long an exit waits for the child's pipes to reach end of file.
const PIPE_DRAIN_WAIT: Duration = Duration::from_millis(200);

/// How long the io thread waits for the supervisor to let go of the child
/// before reaping it anyway.
const REAP_WAIT: Duration = Duration::from_secs(60);

/// What an io thread reads from a pipe at once.
const READ_CHUNK: usize = 16 * 1024;

/// After stdout ends, how long the child may take to exit before its
/// stdout's end is reported on its own (a process exiting closes stdout a
/// moment before its exit shows).
const EOF_GRACE: Duration = Duration::from_millis(100);

/// The io thread's loop for `child`.
pub(super) fn io_loop(
    child: Spawned,
    mut out: StdoutSink,
    mut err: StderrSink,
    reap: &Receiver<()>,
) {
    let pid = child.pid;
    let exit = child.exit;
    let (stdout, stderr) = (child.stdout, child.stderr);
    drop(child.stdin);
    let mut fds = [Some(stdout.as_raw_fd()), Some(stderr.as_raw_fd())];
    for fd in fds.iter().flatten() {
        sys::set_nonblocking(*fd);
    }
    let mut lines = [Lines::new(MAX_LINE_BYTES), Lines::new(MAX_STDERR_LINE)];
    let mut status = None;
    let mut drain_until: Option<Instant> = None;
    // Stdout ended while the child lives: reported once, after EOF_GRACE.
    let mut stdout_eof: Option<Instant> = None;
    // Not zeroed: its pages become resident only as reads fill them, so a
    // quiet agent's buffer costs a page, not 16 KB (50 agents: 0.8 MB).
    let mut chunk: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        if let Some(since) = stdout_eof.filter(|_| status.is_none()) {
            if since.elapsed() >= EOF_GRACE {
                stdout_eof = None;
                if out.parse {
                    (out.sink)(ChildMsg::StdoutClosed);
                }
            }
        }
        let timeout = match (drain_until, stdout_eof.filter(|_| status.is_none())) {
            (None, None) => -1,
            (Some(t), _) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() || fds.iter().all(Option::is_none) {
                    break;
                }
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            }
            (None, Some(since)) => {
                let left = EOF_GRACE.saturating_sub(since.elapsed());
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            }
        };
        let exit_fd = status.is_none().then(|| exit.fd());
        let ready = sys::poll_readable([exit_fd, fds[0], fds[1]], timeout);
        for (k, fd) in fds.iter_mut().enumerate() {
            let Some(raw) = *fd else { continue };
            if !ready[k + 1] {
                continue;
            }
            // Read what is there; 0 means end of file.
            loop {
                match sys::read_into(raw, &mut chunk) {
                    Ok(0) => {
                        *fd = None;
                        if k == 0 && status.is_none() {
                            stdout_eof = Some(Instant::now());
                        }
                        break;
                    }
                    Ok(_) => {
                        if k == 0 {
                            lines[0].feed(&chunk, &mut |r, l| out.line(r, l));
                        } else {
                            lines[1].feed(&chunk, &mut |r, l| err.line(r, l));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *fd = None;
                        break;
                    }
                }
            }
        }
        if status.is_none() && ready[0] {
            status = Some(sys::wait_exited_nowait(pid));
            // The leader is a zombie now: its pid, and so the group id,
            // cannot be reused until it is reaped. Kill what is left of the
            // group while that holds.
            let _ = sys::killpg(pid, libc::SIGKILL);
            drain_until = Some(Instant::now() + PIPE_DRAIN_WAIT);
        }
    }
    lines[0].finish(&mut |r, l| out.line(r, l));
    lines[1].finish(&mut |r, l| err.line(r, l));
    err.finish();
    drop((stdout, stderr));
    let status = status.unwrap_or_else(|| sys::wait_exited_nowait(pid));
    (out.sink)(ChildMsg::Exited(status));
    // Reap once the supervisor has let go of the child (bounded, in case it
    // never does).
    let _ = reap.recv_timeout(REAP_WAIT);
    let _ = sys::reap(pid);
}

/// Where stdout lines go: classified for the supervisor (agents that speak
/// stream-json), or to the debug log (plain processes).
pub(super) struct StdoutSink {
    pub(super) id: String,
    pub(super) parse: bool,
    pub(super) limit: usize,
    pub(super) sink: ChildSink,
}

impl StdoutSink {
    fn line(&mut self, r: LineRead, bytes: &[u8]) -> Flow {
        let id = &self.id;
        if let LineRead::TooLong(n) = r {
            log::warn!("agent {id}: dropped a stdout line of {n} bytes (limit {MAX_LINE_BYTES})");
            if self.parse {
                (self.sink)(ChildMsg::Line(Line::Dropped));
            }
            return Flow::Continue;
        }
        if self.parse {
            (self.sink)(ChildMsg::Line(Line::classify(bytes, self.limit)));
        } else {
            log::debug!(target: "agent", "{id} stdout: {}", String::from_utf8_lossy(bytes));
        }
        Flow::Continue
    }
}

/// Where stderr lines go: the kept tail, and the log at a bounded rate.
pub(super) struct StderrSink {
    id: String,
    tail: StderrTail,
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl StderrSink {
    pub(super) fn new(id: String, tail: StderrTail) -> StderrSink {
        StderrSink {
            id,
            tail,
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    fn line(&mut self, r: LineRead, bytes: &[u8]) -> Flow {
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if let LineRead::TooLong(n) = r {
            text = format!("{text}... ({n} bytes)");
        }
        if self.window.elapsed().as_secs() >= 1 {
            self.report_suppressed();
            self.window = Instant::now();
            self.logged = 0;
        }
        let id = &self.id;
        if self.logged < STDERR_LOG_PER_SEC {
            self.logged += 1;
            log::info!(target: "agent", "{id} stderr: {text}");
        } else {
            if self.suppressed == 0 {
                log::warn!("agent {id}: stderr floods: logging at most {STDERR_LOG_PER_SEC} lines/s (all are drained; the last {STDERR_TAIL_LINES} are kept)");
            }
            self.suppressed += 1;
        }
        let mut t = match self.tail.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if t.len() == STDERR_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(text);
        Flow::Continue
    }

    fn report_suppressed(&mut self) {
        if self.suppressed > 0 {
            log::warn!(
                "agent {}: {} stderr lines not logged (more than {STDERR_LOG_PER_SEC}/s)",
                self.id,
                self.suppressed
            );
            self.suppressed = 0;
        }
    }

    fn finish(&mut self) {
        self.report_suppressed();
    }
}
