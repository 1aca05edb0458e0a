//! Starting, feeding, watching and signalling agent processes.
//!
//! Every agent process:
//!
//! - is executed from its argv (never through a shell), with the daemon's
//!   environment minus `CLAUDECODE` and `CLAUDE_CODE_ENTRYPOINT`, plus the
//!   agent's own `env` and `MISTER_SMITH_AGENT_ID`;
//! - leads its own process group, so one `killpg` reaches its grandchildren;
//! - gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the daemon even when
//!   the daemon is killed with SIGKILL (the parent is the supervisor thread,
//!   which lives as long as the process);
//! - has its rlimits set between `fork` and `exec`;
//! - has both output pipes drained by threads of their own, so a child can
//!   never block on a full pipe, and a writer thread for stdin, so the
//!   supervisor never blocks on a child that does not read.
//!
//! A waiter thread per child observes the exit with `waitid(WNOWAIT)`, kills
//! whatever is left of the group while the leader's pid is still reserved
//! (so the group id cannot have been reused), and only then reaps the child.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::config::{AgentSpec, Protocol};
use crate::runtime::error::ProcessError;
use crate::runtime::supervisor::{Event, Line};

/// How many stderr lines are kept per agent for diagnostics.
pub const STDERR_TAIL_LINES: usize = 20;

/// Stdout lines longer than this are dropped (with a warning) rather than
/// held in memory. claude's lines can be large (whole files in tool results),
/// so the cap is generous.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Stderr lines are cut to this length in the tail and the log.
const MAX_STDERR_LINE: usize = 4096;

/// At most this many stderr lines per second are logged per agent; the rest
/// are counted and reported, so a flood cannot flood the log.
const STDERR_LOG_PER_SEC: u32 = 50;

/// How long an exit waits for the child's pipes to reach end of file.
const PIPE_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Small stacks: these threads only shuffle bytes.
const SMALL_STACK: usize = 64 * 1024;
/// The stdout reader parses JSON, which recurses a little.
const READER_STACK: usize = 256 * 1024;

/// The last lines an agent wrote to stderr, shared between its stderr thread
/// and the supervisor.
pub type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// A started agent process, as the supervisor sees it.
pub struct RunningChild {
    pub pid: u32,
    pub started: Instant,
    /// Lines for the child's stdin; dropping it closes stdin.
    pub stdin: Option<Sender<Vec<u8>>>,
    pub stderr_tail: StderrTail,
    /// Dropped when the supervisor is done with the child: only then does
    /// the waiter reap it, so its pid (the group id) stays reserved for as
    /// long as the supervisor might still signal the group.
    _reap: Sender<()>,
}

impl RunningChild {
    /// Queues one line for the child's stdin. A line is dropped when stdin is
    /// closed; the child's exit will follow and be reported.
    pub fn write_line(&self, mut line: Vec<u8>) -> bool {
        line.push(b'\n');
        self.stdin.as_ref().is_some_and(|tx| tx.send(line).is_ok())
    }

    /// Closes the child's stdin (its cue to finish and exit).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The kept stderr lines, oldest first.
    pub fn stderr_lines(&self) -> Vec<String> {
        tail_lines(&self.stderr_tail)
    }
}

/// The kept stderr lines of a tail, oldest first.
pub fn tail_lines(tail: &StderrTail) -> Vec<String> {
    match tail.lock() {
        Ok(t) => t.iter().cloned().collect(),
        Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
    }
}

/// The argv for an agent's process: the long-lived one of a stream-json
/// agent, the plain one of a `none` agent, or (with `prompt`) one one-shot
/// task. The prompt goes last, after `--`, because claude's list flags
/// (`--allowedTools`, `--mcp-config`, ...) would swallow it anywhere else.
pub fn agent_argv(spec: &AgentSpec, prompt: Option<&str>) -> Vec<String> {
    let mut argv = Vec::with_capacity(spec.args.len() + 8);
    if let Some(prompt) = prompt {
        argv.extend(["-p", "--output-format", "stream-json", "--verbose"].map(String::from));
        argv.extend(spec.args.iter().cloned());
        argv.push("--".into());
        argv.push(prompt.into());
        return argv;
    }
    if spec.protocol == Protocol::StreamJson {
        argv.extend(
            [
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
            ]
            .map(String::from),
        );
    }
    argv.extend(spec.args.iter().cloned());
    argv
}

/// Starts a process of agent number `agent`, run `run`: its long-lived
/// process, or with `prompt`, the process of one one-shot task.
///
/// Must be called from the supervisor thread: `PR_SET_PDEATHSIG` fires when
/// the *thread* that forked the child exits.
pub fn spawn(
    agent: usize,
    run: u64,
    spec: &AgentSpec,
    prompt: Option<&str>,
    max_message_size: usize,
    events: &Sender<Event>,
) -> Result<RunningChild, ProcessError> {
    let mut cmd = Command::new(&spec.command);
    cmd.args(agent_argv(spec, prompt))
        .current_dir(&spec.working_dir)
        .envs(&spec.env)
        .env("MISTER_SMITH_AGENT_ID", &spec.id)
        .env_remove("CLAUDECODE")
        .env_remove("CLAUDE_CODE_ENTRYPOINT")
        .stdin(
            if spec.protocol == Protocol::StreamJson && prompt.is_none() {
                Stdio::piped()
            } else {
                Stdio::null()
            },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    sys::prepare_child(&mut cmd, &spec.limits);

    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        agent: spec.id.clone(),
        program: spec.command.clone(),
        source,
    })?;
    let pid = child.id();
    let started = Instant::now();
    let stderr_tail: StderrTail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let thread_err = |source| ProcessError::Thread {
        agent: spec.id.clone(),
        source,
    };

    // From here on the child runs; if a thread cannot be started we must not
    // leave it unsupervised, so kill it and let the waiter (or we) reap it.
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Each reader holds a clone of `eof_tx` and drops it at end of file; the
    // waiter waits (briefly) for both, so the last lines a child wrote are
    // handled before its exit.
    let (eof_tx, eof_rx) = crossbeam_channel::bounded::<()>(0);
    let result = (|| {
        if let Some(out) = stdout {
            let tx = events.clone();
            let eof = eof_tx.clone();
            let id = spec.id.clone();
            let parse = spec.protocol != Protocol::None;
            thread::Builder::new()
                .name(format!("out:{}", spec.id))
                .stack_size(READER_STACK)
                .spawn(move || {
                    // Room for the envelope around a progress event.
                    let limit = max_message_size.saturating_sub(4096);
                    read_stdout(out, agent, run, &id, parse, limit, &tx);
                    drop(eof);
                })
                .map_err(thread_err)?;
        }
        if let Some(err) = stderr {
            let tail = stderr_tail.clone();
            let id = spec.id.clone();
            let eof = eof_tx.clone();
            thread::Builder::new()
                .name(format!("err:{}", spec.id))
                .stack_size(SMALL_STACK)
                .spawn(move || {
                    read_stderr(err, &id, &tail);
                    drop(eof);
                })
                .map_err(thread_err)?;
        }
        let stdin_tx = match stdin {
            Some(pipe) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                thread::Builder::new()
                    .name(format!("in:{}", spec.id))
                    .stack_size(SMALL_STACK)
                    .spawn(move || write_stdin(pipe, &rx))
                    .map_err(thread_err)?;
                Some(tx)
            }
            None => None,
        };
        Ok(stdin_tx)
    })();
    let stdin_tx = match result {
        Ok(tx) => tx,
        Err(e) => {
            let _ = signal_group(pid, libc::SIGKILL);
            let _ = child.wait();
            return Err(e);
        }
    };

    drop(eof_tx);
    let tx = events.clone();
    let (reap_tx, reap_rx) = crossbeam_channel::bounded::<()>(0);
    let waiter = thread::Builder::new()
        .name(format!("wait:{}", spec.id))
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let status = sys::wait_exited_nowait(child.id());
            // The leader is a zombie now: its pid, and so the group id,
            // cannot be reused until it is reaped. Kill what is left of the
            // group while that holds.
            let _ = signal_group(child.id(), libc::SIGKILL);
            // The group is dead, so the pipes are closing; a process that
            // escaped the group may hold them open, hence the bound.
            let _ = eof_rx.recv_timeout(PIPE_DRAIN_WAIT);
            let _ = tx.send(Event::Exited { agent, run, status });
            // Reap once the supervisor has let go of the child (bounded, in
            // case it never does).
            let _ = reap_rx.recv_timeout(std::time::Duration::from_secs(60));
            let _ = child.wait();
        });
    if let Err(source) = waiter {
        // The closure (and the `Child` in it) is gone; the process is not.
        let _ = signal_group(pid, libc::SIGKILL);
        return Err(thread_err(source));
    }

    Ok(RunningChild {
        pid,
        started,
        stdin: stdin_tx,
        stderr_tail,
        _reap: reap_tx,
    })
}

/// Sends `signal` to the process group `pgid`. A group that no longer exists
/// is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    sys::killpg(pgid, signal)
}

/// Reads stdout line by line. For agents that speak stream-json each line is
/// classified and sent to the supervisor; plain processes' lines are logged.
fn read_stdout(
    out: impl Read,
    agent: usize,
    run: u64,
    id: &str,
    parse: bool,
    limit: usize,
    events: &Sender<Event>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES) {
            Ok(LineRead::Eof) => return,
            Ok(LineRead::TooLong(n)) => {
                log::warn!(
                    "agent {id}: dropped a stdout line of {n} bytes (limit {MAX_LINE_BYTES})"
                );
                if parse
                    && events
                        .send(Event::Stdout {
                            agent,
                            run,
                            line: Line::Dropped,
                        })
                        .is_err()
                {
                    return;
                }
            }
            Ok(LineRead::Line) => {
                if parse {
                    let line = Line::classify(&buf, limit);
                    if events.send(Event::Stdout { agent, run, line }).is_err() {
                        return;
                    }
                } else {
                    log::debug!(target: "agent", "{id} stdout: {}", String::from_utf8_lossy(trim_eol(&buf)));
                }
            }
            Err(e) => {
                log::debug!("agent {id}: stdout read failed: {e}");
                return;
            }
        }
    }
}

/// Drains stderr, keeping the last lines and logging at a bounded rate.
fn read_stderr(err: impl Read, id: &str, tail: &StderrTail) {
    let mut reader = BufReader::with_capacity(64 * 1024, err);
    let mut buf = Vec::new();
    let mut window = Instant::now();
    let (mut logged, mut suppressed) = (0u32, 0u64);
    loop {
        buf.clear();
        match read_line_capped(&mut reader, &mut buf, MAX_STDERR_LINE) {
            Ok(LineRead::Eof) | Err(_) => break,
            Ok(r) => {
                let mut text = String::from_utf8_lossy(trim_eol(&buf)).into_owned();
                if let LineRead::TooLong(n) = r {
                    text = format!("{text}... ({n} bytes)");
                }
                if window.elapsed().as_secs() >= 1 {
                    if suppressed > 0 {
                        log::warn!("agent {id}: {suppressed} stderr lines not logged (more than {STDERR_LOG_PER_SEC}/s)");
                    }
                    window = Instant::now();
                    logged = 0;
                    suppressed = 0;
                }
                if logged < STDERR_LOG_PER_SEC {
                    logged += 1;
                    log::info!(target: "agent", "{id} stderr: {text}");
                } else {
                    if suppressed == 0 {
                        log::warn!("agent {id}: stderr floods: logging at most {STDERR_LOG_PER_SEC} lines/s (all are drained; the last {STDERR_TAIL_LINES} are kept)");
                    }
                    suppressed += 1;
                }
                let mut t = match tail.lock() {
                    Ok(t) => t,
                    Err(p) => p.into_inner(),
                };
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text);
            }
        }
    }
    if suppressed > 0 {
        log::warn!(
            "agent {id}: {suppressed} stderr lines not logged (more than {STDERR_LOG_PER_SEC}/s)"
        );
    }
}

/// Writes queued lines to the child's stdin until the sender is dropped or
/// the child stops reading. Dropping `pipe` on return closes stdin.
fn write_stdin(mut pipe: ChildStdin, lines: &Receiver<Vec<u8>>) {
    for line in lines {
        if pipe.write_all(&line).and_then(|()| pipe.flush()).is_err() {
            return;
        }
    }
}

/// What [`read_line_capped`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line (without its newline) is in the buffer.
    Line,
    /// A line of this many bytes was longer than the cap; the buffer holds its
    /// first `cap` bytes and the rest was skipped.
    TooLong(usize),
    /// End of input, nothing read.
    Eof,
}

/// Reads one `\n`-terminated line into `buf`, keeping at most `cap` bytes of
/// it. Memory stays bounded however long the line is. A last line without a
/// newline counts as a line.
pub fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<LineRead> {
    let mut total = 0usize;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match total {
                0 => LineRead::Eof,
                n if n > cap => LineRead::TooLong(n),
                _ => LineRead::Line,
            });
        }
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        total += part.len();
        let used = done.unwrap_or(part.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if total > cap {
                LineRead::TooLong(total)
            } else {
                LineRead::Line
            });
        }
    }
}

fn trim_eol(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

pub use crate::message::schemas::ResourceUsage;
pub(crate) use sys::wait_exited_nowait;

/// Reads the resident set size and CPU time (user + system) of `pid`.
pub fn resource_usage(pid: u32) -> Option<ResourceUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ResourceUsage {
        memory_mb: rss_kb / 1024.0,
        cpu_seconds: ticks / sys::clock_ticks_per_second(),
    })
}

/// The few calls std does not offer. Every `unsafe` block of the crate is
/// here.
mod sys {
    use std::io;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use std::process::ExitStatus;

    use crate::config::Limits;

    /// Sets PDEATHSIG and rlimits in the child between `fork` and `exec`.
    pub(super) fn prepare_child(cmd: &mut Command, limits: &Limits) {
        let parent = std::process::id() as libc::pid_t;
        let rlimits: Vec<(libc::__rlimit_resource_t, u64)> = [
            (
                libc::RLIMIT_DATA,
                limits.memory_mb.map(|m| m.saturating_mul(1024 * 1024)),
            ),
            (libc::RLIMIT_CPU, limits.cpu_seconds),
            (libc::RLIMIT_NOFILE, limits.open_files),
        ]
        .into_iter()
        .filter_map(|(r, v)| v.map(|v| (r, v)))
        .collect();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (prctl, getppid, setrlimit,
        // kill) on values computed before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The daemon may have died between fork and prctl; then no
                // signal would ever come.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                for &(resource, value) in &rlimits {
                    let lim = libc::rlimit {
                        rlim_cur: value as libc::rlim_t,
                        rlim_max: value as libc::rlim_t,
                    };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// Blocks until process `pid` (our child) has exited, without reaping
    /// it, and returns how it exited.
    pub(crate) fn wait_exited_nowait(pid: u32) -> io::Result<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        loop {
            // SAFETY: `info` is a plain C struct that waitid fills in; an
            // all-zero value is a valid starting point.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is valid for writes for the duration of the call.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if rc == 0 {
                // SAFETY: waitid succeeded for a child, so si_status holds
                // its exit code or signal.
                let status = unsafe { info.si_status() };
                // Encode as wait(2) does, so ExitStatus reads it back.
                let raw = match info.si_code {
                    libc::CLD_EXITED => (status & 0xff) << 8,
                    libc::CLD_DUMPED => status | 0x80,
                    _ => status,
                };
                return Ok(ExitStatus::from_raw(raw));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// `killpg`, with "no such group" treated as success.
    pub(super) fn killpg(pgid: u32, signal: i32) -> io::Result<()> {
        let Ok(pgid) = libc::pid_t::try_from(pgid) else {
            return Ok(());
        };
        // pgid 0 or 1 would signal our own group or everything: never.
        if pgid <= 1 {
            return Ok(());
        }
        // SAFETY: killpg has no memory-safety preconditions.
        if unsafe { libc::killpg(pgid, signal) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        }
    }

    pub(super) fn clock_ticks_per_second() -> f64 {
        // SAFETY: sysconf has no memory-safety preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], cap: usize) -> Vec<(LineRead, Vec<u8>)> {
        let mut r = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let got = read_line_capped(&mut r, &mut buf, cap).unwrap();
            if got == LineRead::Eof {
                return out;
            }
            out.push((got, buf));
        }
    }

    #[test]
    fn lines_are_split_and_capped() {
        let got = lines(b"ab\n0123456789\n\nlast", 5);
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"ab".to_vec()),
                (LineRead::TooLong(10), b"01234".to_vec()),
                (LineRead::Line, b"".to_vec()),
                (LineRead::Line, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn own_resource_usage_is_readable() {
        let u = resource_usage(std::process::id()).unwrap();
        assert!(u.memory_mb > 0.0);
        assert!(u.cpu_seconds >= 0.0);
    }

    #[test]
    fn signalling_a_missing_group_is_fine() {
        // Group ids near the pid limit are almost never in use; ESRCH is Ok.
        assert!(signal_group(4_194_000, 0).is_ok());
        // 0 and 1 are refused silently rather than signalling everything.
        assert!(signal_group(0, 0).is_ok());
    }
}
