//! Starting real agent processes.
//!
//! Every agent process:
//!
//! - is executed from its argv (never through a shell), with the daemon's
//!   environment minus claude's session variables, plus the agent's own
//!   `env` and `MISTER_SMITH_AGENT_ID`;
//! - leads its own process group, so one `killpg` reaches its
//!   grandchildren;
//! - gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the daemon even when
//!   the daemon is killed with SIGKILL;
//! - has its rlimits set between `clone` and `exec` (see `sys::spawn`);
//! - has its output drained by an io thread of its own, and (stream-json
//!   agents) a writer thread for stdin.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created the child exits,
//! so children are only ever spawned from threads that live as long as the
//! daemon: the supervisor's, and the spawner pool's.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::Sender;

use super::child::{write_stdin, RunningChild, StderrTail, STDERR_TAIL_LINES};
use super::handle::{ChildHandle, ChildSink, SpawnDone, SpawnRequest, Spawner};
use super::io::{io_loop, StderrSink, StdoutSink};
use crate::config::{Limits, Protocol};
use crate::runtime::claude;
use crate::runtime::error::ProcessError;
use crate::runtime::tracker;
use crate::sys;
use crate::sys::spawn::{Plan, Spawned};

/// Small stacks: these threads only shuffle bytes.
const SMALL_STACK: usize = 64 * 1024;
/// The io thread parses JSON, which recurses a little.
const IO_STACK: usize = 256 * 1024;
/// Room left for the envelope around a progress event.
const ENVELOPE_ROOM: usize = 4096;

/// Spawns real processes: in place, or on a pool of threads that live as
/// long as the daemon.
pub(crate) struct OsSpawner {
    pool: Option<Sender<Job>>,
}

struct Job {
    req: SpawnRequest,
    sink: ChildSink,
    done: SpawnDone,
}

impl OsSpawner {
    /// A spawner with `threads` pool threads for [`Spawner::spawn_later`]
    /// (none: those spawns happen in place).
    pub(crate) fn new(threads: usize) -> std::io::Result<OsSpawner> {
        if threads == 0 {
            return Ok(OsSpawner { pool: None });
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for n in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("spawner:{n}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    for job in rx {
                        match start(job.req, job.sink) {
                            Ok((child, io)) => {
                                (job.done)(Ok(Box::new(child)));
                                io.go();
                            }
                            Err(e) => (job.done)(Err(e)),
                        }
                    }
                })?;
        }
        Ok(OsSpawner { pool: Some(tx) })
    }
}

impl Spawner for OsSpawner {
    fn spawn(
        &mut self,
        req: SpawnRequest,
        sink: ChildSink,
    ) -> Result<Box<dyn ChildHandle>, ProcessError> {
        let (child, io) = start(req, sink)?;
        io.go();
        Ok(Box::new(child))
    }

    fn spawn_later(&mut self, req: SpawnRequest, sink: ChildSink, done: SpawnDone) {
        let job = Job { req, sink, done };
        let job = match &self.pool {
            Some(pool) => match pool.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        match start(job.req, job.sink) {
            Ok((child, io)) => {
                (job.done)(Ok(Box::new(child)));
                io.go();
            }
            Err(e) => (job.done)(Err(e)),
        }
    }
}

/// The io thread of a spawned child, waiting for its go: until then none
/// of the child's lines or its exit are reported, so whoever spawned it
/// can announce the child first.
struct IoStart {
    go: Sender<Spawned>,
    child: Spawned,
}

impl IoStart {
    fn go(self) {
        let _ = self.go.send(self.child);
    }
}

/// Spawns the process and its threads, holding its io thread back.
fn start(req: SpawnRequest, sink: ChildSink) -> Result<(RunningChild, IoStart), ProcessError> {
    let spec = &req.spec;
    let env = sys::spawn::child_env(
        spec.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("MISTER_SMITH_AGENT_ID", spec.id.as_str())])
            .chain(
                req.trace_id
                    .as_deref()
                    .map(|t| ("MISTER_SMITH_TRACE_ID", t)),
            )
            .chain(tracker::run_mark().map(|dir| (tracker::RUN_DIR_ENV, dir))),
        &claude::REMOVED_ENV,
    );
    let spawn_error = |source| ProcessError::Spawn {
        agent: spec.id.clone(),
        program: spec.command.clone(),
        source,
    };
    let stream = spec.protocol == Protocol::StreamJson && req.prompt.is_none();
    let plan = Plan::new(
        &spec.command,
        &claude::argv(spec, req.prompt.as_deref(), req.resume.as_deref()),
        &spec.working_dir,
        &env,
        stream,
        rlimits(&spec.limits),
    )
    .map_err(spawn_error)?;
    let mut child = sys::spawn::spawn(&plan).map_err(spawn_error)?;
    let pid = child.pid;
    let thread_err = |source| ProcessError::Thread {
        agent: spec.id.clone(),
        source,
    };
    // From here on the child runs; if a thread cannot be started it must
    // not be left unsupervised: kill it and reap it.
    let give_up = |source| {
        let _ = sys::killpg(pid, libc::SIGKILL);
        let _ = sys::reap(pid);
        thread_err(source)
    };
    let queued = Arc::new(AtomicUsize::new(0));
    let (stdin_tx, stdin_fd) = match child.stdin.take() {
        Some(pipe) => {
            use std::os::fd::AsRawFd;
            let fd = pipe.as_raw_fd();
            sys::set_nonblocking(fd);
            let (tx, rx) = crossbeam_channel::unbounded();
            let q = queued.clone();
            let spawned = thread::Builder::new()
                .name(format!("in:{}", spec.id))
                .stack_size(SMALL_STACK)
                .spawn(move || write_stdin(pipe, &rx, &q));
            if let Err(e) = spawned {
                return Err(give_up(e));
            }
            (Some(tx), Some(fd))
        }
        None => (None, None),
    };
    let stderr_tail: StderrTail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let (reap_tx, reap_rx) = crossbeam_channel::bounded::<()>(0);
    let out = StdoutSink {
        id: spec.id.clone(),
        parse: spec.protocol.takes_tasks(),
        limit: req.max_message_size.saturating_sub(ENVELOPE_ROOM),
        sink,
    };
    let err = StderrSink::new(spec.id.clone(), stderr_tail.clone());
    let (go_tx, go_rx) = crossbeam_channel::bounded::<Spawned>(1);
    let spawned = thread::Builder::new()
        .name(format!("io:{}", spec.id))
        .stack_size(IO_STACK)
        .spawn(move || {
            let Ok(child) = go_rx.recv() else { return };
            io_loop(child, out, err, &reap_rx);
        });
    if let Err(e) = spawned {
        return Err(give_up(e));
    }
    Ok((
        RunningChild {
            pid,
            stdin: stdin_tx,
            stdin_fd,
            queued,
            stderr_tail,
            _reap: reap_tx,
        },
        IoStart { go: go_tx, child },
    ))
}

/// The rlimits `limits` asks for, as (resource, value).
fn rlimits(limits: &Limits) -> Vec<(libc::__rlimit_resource_t, u64)> {
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
