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
use std::io::{self, BufRead};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::config::{AgentSpec, Protocol};
use crate::runtime::error::ProcessError;
use crate::runtime::spawn;
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
/// What an io thread reads from a pipe at once.
const READ_CHUNK: usize = 16 * 1024;

/// The last lines an agent wrote to stderr, shared between its stderr thread
/// and the supervisor.
pub type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// A started agent process, as the supervisor sees it.
pub struct RunningChild {
    pub pid: u32,
    pub started: Instant,
    /// Lines for the child's stdin writer; dropping it closes stdin.
    pub stdin: Option<Sender<Vec<u8>>>,
    /// The stdin pipe (non-blocking), written directly while the writer has
    /// nothing queued: one thread hand-off less on every task. Open for as
    /// long as `stdin` is `Some` (the writer keeps the pipe until then).
    stdin_fd: Option<i32>,
    /// Lines handed to the writer and not yet fully written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    pub stderr_tail: StderrTail,
    /// Dropped when the supervisor is done with the child: only then does
    /// the waiter reap it, so its pid (the group id) stays reserved for as
    /// long as the supervisor might still signal the group.
    _reap: Sender<()>,
}

impl RunningChild {
    /// Writes one line to the child's stdin: directly when the pipe has room
    /// and nothing is queued, else through the writer thread, so the caller
    /// never blocks and lines stay in order. A line is dropped when stdin is
    /// closed; the child's exit will follow and be reported.
    pub fn write_line(&self, mut line: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering;
        line.push(b'\n');
        let Some(tx) = &self.stdin else { return false };
        let mut rest: &[u8] = &line;
        if let (Some(fd), 0) = (self.stdin_fd, self.queued.load(Ordering::Acquire)) {
            while !rest.is_empty() {
                // SAFETY: `fd` is the open stdin pipe (see `stdin_fd`) and
                // `rest` is valid for reads of its length.
                let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
                if n > 0 {
                    rest = &rest[n as usize..];
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    // The child closed its stdin: its exit will follow.
                    _ => return false,
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

    /// Closes the child's stdin (its cue to finish and exit).
    pub fn close_stdin(&mut self) {
        self.stdin_fd = None;
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

/// Spawns the process and its threads, but holds its io thread back (see
/// [`IoStart`]).
fn spawn_parts(
    agent: usize,
    run: u64,
    spec: &AgentSpec,
    prompt: Option<&str>,
    max_message_size: usize,
    events: &Sender<Event>,
) -> Result<(RunningChild, IoStart), ProcessError> {
    let env = spawn::child_env(
        spec.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("MISTER_SMITH_AGENT_ID", spec.id.as_str())]),
        &["CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"],
    );
    let spawn_error = |source| ProcessError::Spawn {
        agent: spec.id.clone(),
        program: spec.command.clone(),
        source,
    };
    let plan = spawn::Plan::new(
        &spec.command,
        &agent_argv(spec, prompt),
        &spec.working_dir,
        &env,
        spec.protocol == Protocol::StreamJson && prompt.is_none(),
        rlimits(&spec.limits),
    )
    .map_err(spawn_error)?;
    let mut child = spawn::spawn(&plan).map_err(spawn_error)?;
    let pid = child.pid;
    let started = Instant::now();
    let stderr_tail: StderrTail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let thread_err = |source| ProcessError::Thread {
        agent: spec.id.clone(),
        source,
    };

    // From here on the child runs; if a thread cannot be started we must not
    // leave it unsupervised: kill it and reap it.
    let give_up = |child: spawn::Spawned, source| {
        let _ = signal_group(pid, libc::SIGKILL);
        let _ = spawn::wait(child.pid);
        thread_err(source)
    };
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stdin_tx, stdin_fd) = match child.stdin.take() {
        Some(pipe) => {
            use std::os::unix::io::AsRawFd;
            let fd = pipe.as_raw_fd();
            sys::set_nonblocking(fd);
            let (tx, rx) = crossbeam_channel::unbounded();
            let q = queued.clone();
            let spawned = thread::Builder::new()
                .name(format!("in:{}", spec.id))
                .stack_size(SMALL_STACK)
                .spawn(move || write_stdin(pipe, &rx, &q));
            if let Err(e) = spawned {
                return Err(give_up(child, e));
            }
            (Some(tx), Some(fd))
        }
        None => (None, None),
    };
    let (reap_tx, reap_rx) = crossbeam_channel::bounded::<()>(0);
    let out = StdoutSink {
        agent,
        run,
        id: spec.id.clone(),
        parse: spec.protocol != Protocol::None,
        // Room for the envelope around a progress event.
        limit: max_message_size.saturating_sub(4096),
        events: events.clone(),
    };
    let err = StderrSink::new(spec.id.clone(), stderr_tail.clone());
    let tx = events.clone();
    // One thread per child watches its exit and both output pipes (the
    // stdin writer above exists only for stream-json agents).
    let (child_tx, child_rx) = crossbeam_channel::bounded::<spawn::Spawned>(1);
    let spawned = thread::Builder::new()
        .name(format!("io:{}", spec.id))
        .stack_size(READER_STACK)
        .spawn(move || {
            let Ok(child) = child_rx.recv() else { return };
            io_loop(child, out, err, &tx, agent, run, &reap_rx);
        });
    if let Err(e) = spawned {
        return Err(give_up(child, e));
    }
    Ok((
        RunningChild {
            pid,
            started,
            stdin: stdin_tx,
            stdin_fd,
            queued,
            stderr_tail,
            _reap: reap_tx,
        },
        IoStart { child_tx, child },
    ))
}

/// The io thread of a spawned child, waiting for its go: until then none of
/// the child's lines or its exit reach the supervisor, so whoever spawned it
/// can announce the child first.
pub struct IoStart {
    child_tx: Sender<spawn::Spawned>,
    child: spawn::Spawned,
}

impl IoStart {
    pub fn go(self) {
        let _ = self.child_tx.send(self.child);
    }
}

/// Starts a process of agent number `agent`, run `run`: its long-lived
/// process, or with `prompt`, the process of one one-shot task.
///
/// Must be called from a thread that lives as long as the daemon:
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits.
pub fn spawn(
    agent: usize,
    run: u64,
    spec: &AgentSpec,
    prompt: Option<&str>,
    max_message_size: usize,
    events: &Sender<Event>,
) -> Result<RunningChild, ProcessError> {
    let (child, io) = spawn_parts(agent, run, spec, prompt, max_message_size, events)?;
    io.go();
    Ok(child)
}

/// A start for the spawner pool.
pub struct SpawnJob {
    pub agent: usize,
    pub run: u64,
    pub spec: AgentSpec,
    pub max_message_size: usize,
}

/// Threads that spawn agents concurrently (a cold start of many agents
/// would otherwise wait for each exec in turn). They live as long as the
/// daemon, as PDEATHSIG requires, and answer with `Event::Spawned`, sent
/// before the child's io thread may report anything.
pub fn spawner_pool(threads: usize, events: &Sender<Event>) -> io::Result<Sender<SpawnJob>> {
    let (tx, rx) = crossbeam_channel::unbounded::<SpawnJob>();
    for n in 0..threads.max(1) {
        let (rx, events) = (rx.clone(), events.clone());
        thread::Builder::new()
            .name(format!("spawner:{n}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx {
                    let r = spawn_parts(
                        job.agent,
                        job.run,
                        &job.spec,
                        None,
                        job.max_message_size,
                        &events,
                    );
                    match r {
                        Ok((child, io)) => {
                            let _ = events.send(Event::Spawned {
                                agent: job.agent,
                                run: job.run,
                                result: Ok(child),
                            });
                            io.go();
                        }
                        Err(e) => {
                            let _ = events.send(Event::Spawned {
                                agent: job.agent,
                                run: job.run,
                                result: Err(e),
                            });
                        }
                    }
                }
            })?;
    }
    Ok(tx)
}

impl std::fmt::Debug for RunningChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningChild")
            .field("pid", &self.pid)
            .finish()
    }
}

/// The child's watcher: polls its exit (a pidfd) and both output pipes,
/// hands lines on as they come, and on exit kills what is left of the
/// group, drains the pipes (briefly: a process that left the group may hold
/// them open), reports the exit, and reaps the child once the supervisor
/// has let go of it.
fn io_loop(
    child: spawn::Spawned,
    mut out: StdoutSink,
    mut err: StderrSink,
    events: &Sender<Event>,
    agent: usize,
    run: u64,
    reap: &Receiver<()>,
) {
    use std::os::unix::io::AsRawFd;
    let pid = child.pid;
    let stdout = Some(child.stdout);
    let stderr = Some(child.stderr);
    drop(child.stdin);
    let exit = sys::ExitWatch::new(pid);
    let mut fds: [Option<i32>; 2] = [
        stdout.as_ref().map(AsRawFd::as_raw_fd),
        stderr.as_ref().map(AsRawFd::as_raw_fd),
    ];
    for fd in fds.iter().flatten() {
        sys::set_nonblocking(*fd);
    }
    let mut lines = [Lines::new(MAX_LINE_BYTES), Lines::new(MAX_STDERR_LINE)];
    let mut status = None;
    let mut drain_until: Option<Instant> = None;
    // Not zeroed: its pages become resident only as reads fill them, so a
    // quiet agent's buffer costs a page, not 16 KB (50 agents: 0.8 MB).
    let mut chunk: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let timeout = match drain_until {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() || fds.iter().all(Option::is_none) {
                    break;
                }
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            }
        };
        let ready = sys::poll3(
            if status.is_none() {
                Some(exit.fd())
            } else {
                None
            },
            fds,
            timeout,
        );
        for (k, fd) in fds.iter_mut().enumerate() {
            let Some(raw) = *fd else { continue };
            if !ready[k + 1] {
                continue;
            }
            // Read what is there; 0 means end of file.
            loop {
                // SAFETY: `chunk` is valid for writes of its capacity; `raw`
                // is an open pipe owned by `stdout`/`stderr` above.
                let n = unsafe { libc::read(raw, chunk.as_mut_ptr().cast(), chunk.capacity()) };
                if n > 0 {
                    // SAFETY: the read initialized the first `n` bytes.
                    unsafe { chunk.set_len(n as usize) };
                    let data = &chunk[..];
                    if k == 0 {
                        lines[0].feed(data, &mut |r, l| out.line(r, l));
                    } else {
                        lines[1].feed(data, &mut |r, l| err.line(r, l));
                    }
                    continue;
                }
                let e = std::io::Error::last_os_error();
                if n < 0 && (e.kind() == std::io::ErrorKind::Interrupted) {
                    continue;
                }
                if n < 0 && e.kind() == std::io::ErrorKind::WouldBlock {
                    break;
                }
                *fd = None;
                break;
            }
        }
        if status.is_none() && ready[0] {
            status = Some(sys::wait_exited_nowait(pid));
            // The leader is a zombie now: its pid, and so the group id,
            // cannot be reused until it is reaped. Kill what is left of the
            // group while that holds.
            let _ = signal_group(pid, libc::SIGKILL);
            drain_until = Some(Instant::now() + PIPE_DRAIN_WAIT);
        }
    }
    lines[0].finish(&mut |r, l| out.line(r, l));
    lines[1].finish(&mut |r, l| err.line(r, l));
    err.finish();
    drop((stdout, stderr));
    let status = status.unwrap_or_else(|| sys::wait_exited_nowait(pid));
    let _ = events.send(Event::Exited { agent, run, status });
    // Reap once the supervisor has let go of the child (bounded, in case it
    // never does).
    let _ = reap.recv_timeout(std::time::Duration::from_secs(60));
    let _ = spawn::wait(pid);
}

/// Splits a byte stream into `\n`-terminated lines, keeping at most `cap`
/// bytes of each: memory stays bounded however long a line is.
struct Lines {
    buf: Vec<u8>,
    cap: usize,
    total: usize,
}

impl Lines {
    fn new(cap: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            cap,
            total: 0,
        }
    }

    fn push(&mut self, d: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&d[..d.len().min(room)]);
        self.total += d.len();
    }

    fn emit(&mut self, out: &mut dyn FnMut(LineRead, &[u8])) {
        let kind = if self.total > self.cap {
            LineRead::TooLong(self.total)
        } else {
            LineRead::Line
        };
        out(kind, trim_eol(&self.buf));
        self.buf.clear();
        self.total = 0;
        // A huge line's buffer is not kept around.
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
    }

    fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(LineRead, &[u8])) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.push(&data[..i]);
            self.emit(out);
            data = &data[i + 1..];
        }
        self.push(data);
    }

    /// A last line without a newline still counts.
    fn finish(&mut self, out: &mut dyn FnMut(LineRead, &[u8])) {
        if self.total > 0 {
            self.emit(out);
        }
    }
}

/// Where stdout lines go: classified for the supervisor (agents that speak
/// stream-json), or to the debug log (plain processes).
struct StdoutSink {
    agent: usize,
    run: u64,
    id: String,
    parse: bool,
    limit: usize,
    events: Sender<Event>,
}

impl StdoutSink {
    fn line(&mut self, r: LineRead, bytes: &[u8]) {
        let (agent, run, id) = (self.agent, self.run, &self.id);
        if let LineRead::TooLong(n) = r {
            log::warn!("agent {id}: dropped a stdout line of {n} bytes (limit {MAX_LINE_BYTES})");
            if self.parse {
                let _ = self.events.send(Event::Stdout {
                    agent,
                    run,
                    line: Line::Dropped,
                });
            }
            return;
        }
        if self.parse {
            let line = Line::classify(bytes, self.limit);
            let _ = self.events.send(Event::Stdout { agent, run, line });
        } else {
            log::debug!(target: "agent", "{id} stdout: {}", String::from_utf8_lossy(bytes));
        }
    }
}

/// Where stderr lines go: the kept tail, and the log at a bounded rate.
struct StderrSink {
    id: String,
    tail: StderrTail,
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl StderrSink {
    fn new(id: String, tail: StderrTail) -> StderrSink {
        StderrSink {
            id,
            tail,
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    fn line(&mut self, r: LineRead, bytes: &[u8]) {
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

/// Sends `signal` to the process group `pgid`. A group that no longer exists
/// is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    sys::killpg(pgid, signal)
}

/// Writes queued lines to the child's (non-blocking) stdin, waiting for
/// room when the pipe is full, until the sender is dropped. After a write
/// error the rest is discarded, but the pipe stays open until the sender is
/// gone: the supervisor may still hold its fd. Dropping `pipe` closes stdin.
fn write_stdin(
    pipe: std::fs::File,
    lines: &Receiver<Vec<u8>>,
    queued: &std::sync::atomic::AtomicUsize,
) {
    use std::os::unix::io::AsRawFd;
    let fd = pipe.as_raw_fd();
    let mut broken = false;
    for line in lines {
        let mut rest: &[u8] = &line;
        while !broken && !rest.is_empty() {
            // SAFETY: `fd` is `pipe`'s, open for this whole function, and
            // `rest` is valid for reads of its length.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n > 0 {
                rest = &rest[n as usize..];
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => sys::wait_writable(fd),
                _ => broken = true,
            }
        }
        queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
    drop(pipe);
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

/// The rlimits `limits` asks for, as (resource, value).
fn rlimits(limits: &crate::config::Limits) -> Vec<(libc::__rlimit_resource_t, u64)> {
    [
        (
            libc::RLIMIT_DATA,
            limits.memory_mb.map(|m| m.saturating_mul(1024 * 1024)),
        ),
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_NOFILE, limits.open_files),
    ]
    .into_iter()
    .filter_map(|(r, v)| v.map(|v| (r, v)))
    .collect()
}

/// The few calls std does not offer (starting a child is in `spawn`).
mod sys {
    use std::io;
    use std::process::ExitStatus;

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

    /// What tells the io thread that the child exited: a pidfd (Linux 5.3
    /// and later), else a pipe written by a small waiter thread.
    pub(super) struct ExitWatch {
        fd: std::os::fd::OwnedFd,
    }

    impl ExitWatch {
        pub(super) fn new(pid: u32) -> ExitWatch {
            use std::os::fd::FromRawFd;
            // SAFETY: pidfd_open takes a pid and flags, returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            if fd >= 0 {
                // SAFETY: the fd was just returned to us and is owned here.
                return ExitWatch {
                    fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
                };
            }
            let mut p = [0i32; 2];
            // SAFETY: `p` is valid for two ints.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                // Without even a pipe the waiter below cannot signal: fall
                // back to waiting in place (the io thread blocks on exit).
                let _ = wait_exited_nowait(pid);
                // SAFETY: opening /dev/null; a fresh fd owned here.
                let fd =
                    unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                return ExitWatch {
                    // SAFETY: fd is ours (or -1, never read from then).
                    fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
                };
            }
            // SAFETY: both fds were just created and are owned here.
            let (r, w) = unsafe {
                (
                    std::os::fd::OwnedFd::from_raw_fd(p[0]),
                    std::os::fd::OwnedFd::from_raw_fd(p[1]),
                )
            };
            let _ = std::thread::Builder::new()
                .name("waitid".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = wait_exited_nowait(pid);
                    // Closing the write end makes the read end readable.
                    drop(w);
                });
            ExitWatch { fd: r }
        }

        pub(super) fn fd(&self) -> i32 {
            use std::os::fd::AsRawFd;
            self.fd.as_raw_fd()
        }
    }

    /// Blocks until `fd` can take a write (or is broken).
    pub(super) fn wait_writable(fd: i32) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `p` is a valid pollfd for the call.
        unsafe {
            libc::poll(&mut p, 1, -1);
        }
    }

    pub(super) fn set_nonblocking(fd: i32) {
        // SAFETY: fcntl on an open fd with plain integer arguments.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
    }

    /// Polls up to three fds (`exit`, then the two pipes) for input; returns
    /// which are ready (end of file and errors count as ready).
    pub(super) fn poll3(exit: Option<i32>, pipes: [Option<i32>; 2], timeout_ms: i32) -> [bool; 3] {
        let all = [exit, pipes[0], pipes[1]];
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut slot = [usize::MAX; 3];
        for (i, fd) in all.iter().enumerate() {
            if let Some(fd) = fd {
                slot[i] = pfds.len();
                pfds.push(libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        loop {
            // SAFETY: `pfds` is a valid array of its length for the call.
            let n =
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
            if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let mut ready = [false; 3];
        for i in 0..3 {
            if slot[i] != usize::MAX {
                ready[i] = pfds[slot[i]].revents != 0;
            }
        }
        ready
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
    use std::io::BufReader;

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
    fn streamed_lines_are_split_and_capped_across_chunks() {
        let mut got = Vec::new();
        let mut l = Lines::new(5);
        for chunk in [&b"ab\n012"[..], b"3456789\n", b"\nla", b"st"] {
            l.feed(chunk, &mut |r, b| got.push((r, b.to_vec())));
        }
        l.finish(&mut |r, b| got.push((r, b.to_vec())));
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
