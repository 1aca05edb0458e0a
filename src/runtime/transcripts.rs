//! Transcripts: every envelope of every task, appended as NDJSON to
//! `{dir}/{agent_id}/{task_id}.ndjson`: the task as assigned first, then
//! each progress event, the result last (a retried task goes on in the same
//! file).
//!
//! The supervisor only hands over the bytes it has already encoded for the
//! wire; one thread of its own writes them, so a slow disk or a flood of
//! progress events never slows dispatch. Like the log queue, the queue is
//! bounded by a count: past it, lines are dropped and counted, and the count
//! is logged. The same thread prunes: transcripts older than `retain`, and
//! past `max_bytes` in all the oldest first.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::LogsConfig;
use crate::message::dispatcher::Task;
use crate::message::envelope::{Envelope, Payload};
use crate::message::router::id_token;
use crate::message::schemas::TaskAssignment;

/// Lines waiting for the disk at most.
const QUEUE: usize = 65_536;

/// Files kept open at most (a task's file stays open until its result).
const OPEN_FILES: usize = 256;

/// The mark of an agent's transcript directory, made by the writer: only
/// marked directories are pruned, so a `log_dir` shared with other programs
/// loses none of their files.
const MARK: &str = ".mister-smith-transcripts";

/// How often the limits are applied.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The transcript directory of a configuration: `log_dir`, else
/// `transcripts` in the run directory.
pub(crate) fn dir_of(logs: &LogsConfig, run_dir: &Path) -> PathBuf {
    logs.dir
        .clone()
        .unwrap_or_else(|| run_dir.join("transcripts"))
}

/// A transcript's first line: the task as it was assigned to `agent`.
pub(crate) fn assignment(task: &Task, agent: &str) -> Vec<u8> {
    let mut env = Envelope::new(Payload::TaskAssignment(TaskAssignment {
        task_id: task.task_id.clone(),
        prompt: task.prompt.clone(),
        context: task.context.clone(),
        retries: Some(task.retries),
        session_id: task.session.clone(),
    }));
    if let Some(id) = task.origin.message_id {
        env.message_id = id;
    }
    env.correlation_id = task.origin.correlation_id;
    env.trace_id.clone_from(&task.origin.trace_id);
    env.source_agent_id.clone_from(&task.origin.source_agent_id);
    env.target_agent_id = Some(agent.to_string());
    env.priority = task.priority;
    env.timeout_ms = u64::try_from(task.timeout.as_millis()).ok();
    env.reply_to.clone_from(&task.origin.reply_to);
    env.encode()
}

/// The file name of a task's transcript: its id where that is a safe file
/// name, else in hex; a very long id is cut and told apart by a hash.
pub(crate) fn file_name(task_id: &str) -> String {
    let token = id_token(task_id);
    if token.len() <= 200 {
        return format!("{token}.ndjson");
    }
    // FNV-1a: enough to tell two long ids apart in a file name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{h:016x}.ndjson", &token[..150])
}

/// Which transcript a line goes to.
enum Place {
    /// The task's on this agent.
    Agent(String),
    /// An unrun task's result: the transcript the task has open, wherever
    /// it is; else one for the agent it was sent to; else none.
    Open { or_agent: Option<String> },
}

struct Line {
    place: Place,
    task: String,
    data: Arc<Vec<u8>>,
    /// Written before `data` when the file is new: an unrun task's
    /// assignment, so that its transcript starts like any other.
    first: Option<Vec<u8>>,
    /// The result: the file is closed after it.
    last: bool,
}

/// The supervisor's end.
#[derive(Clone)]
pub(crate) struct Transcripts {
    tx: Sender<Line>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Transcripts {
    /// Starts the writer for `dir`; `None` (and a log line) when its
    /// thread cannot start.
    pub(crate) fn start(dir: PathBuf, logs: &LogsConfig) -> Option<Transcripts> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let t = Transcripts {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let writer = Writer {
            dir,
            retain: logs.retain,
            max_bytes: logs.max_bytes,
            open: HashMap::new(),
            made: std::collections::HashSet::new(),
            top: None,
            failed_at: None,
        };
        let (queued, dropped) = (t.queued.clone(), t.dropped.clone());
        match std::thread::Builder::new()
            .name("transcripts".into())
            .stack_size(128 * 1024)
            .spawn(move || writer.run(&rx, &queued, &dropped))
        {
            Ok(_) => Some(t),
            Err(e) => {
                log::error!("cannot start the transcript writer: {e}; no transcripts are written");
                None
            }
        }
    }

    /// Appends `data` (one encoded envelope) to the transcript of `task`
    /// on `agent`; `last` closes it.
    pub(crate) fn write(&self, agent: &str, task: &str, data: Arc<Vec<u8>>, last: bool) {
        self.send(Line {
            place: Place::Agent(agent.to_string()),
            task: task.to_string(),
            data,
            first: None,
            last,
        });
    }

    /// The result of a task answered without running (it timed out in the
    /// queue, or was cancelled): the end of the transcript it has open (it
    /// ran before and was put back), else of one for `agent`, the agent it
    /// was sent to; a task for any agent that never reached one has none.
    pub(crate) fn finish_unrun(&self, agent: Option<&str>, task: &Task, data: Arc<Vec<u8>>) {
        self.send(Line {
            place: Place::Open {
                or_agent: agent.map(String::from),
            },
            task: task.task_id.clone(),
            data,
            first: agent.map(|a| assignment(task, a)),
            last: true,
        });
    }

    /// Queues `line`, or drops and counts it past the bound.
    fn send(&self, line: Line) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(line).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Writer {
    dir: PathBuf,
    retain: Duration,
    max_bytes: u64,
    open: HashMap<(String, String), BufWriter<File>>,
    /// The agents whose directory exists (made once, not for every task).
    made: std::collections::HashSet<String>,
    /// log_dir's device and inode at the first write.
    top: Option<(u64, u64)>,
    /// When a write last failed (a full disk is said once a minute).
    failed_at: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Line>, queued: &AtomicUsize, dropped: &AtomicU64) {
        let mut next_prune = Instant::now();
        loop {
            if Instant::now() >= next_prune {
                self.prune();
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            let first = match rx.recv_timeout(next_prune.saturating_duration_since(Instant::now()))
            {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            queued.fetch_sub(1, Ordering::Relaxed);
            self.append(first);
            // Whatever else is waiting, then one flush for all of it.
            while let Ok(l) = rx.try_recv() {
                queued.fetch_sub(1, Ordering::Relaxed);
                self.append(l);
            }
            self.flush_all();
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                log::warn!("transcripts: {lost} lines dropped: the disk did not keep up");
            }
        }
        self.flush_all();
    }

    fn append(&mut self, l: Line) {
        let open_for = |task: &str| {
            self.open
                .keys()
                .find(|(_, t)| t == task)
                .map(|(a, _)| a.clone())
        };
        let agent = match l.place {
            Place::Agent(a) => a,
            Place::Open { or_agent } => match open_for(&l.task).or(or_agent) {
                Some(a) => a,
                None => return,
            },
        };
        let key = (agent, l.task);
        if !self.open.contains_key(&key) {
            if self.open.len() >= OPEN_FILES {
                self.flush_all();
                self.open.clear();
            }
            match self.open_file(&key.0, &key.1) {
                Ok(f) => {
                    let fresh = f.metadata().is_ok_and(|m| m.len() == 0);
                    let mut w = BufWriter::new(f);
                    if let Some(first) = l.first.as_deref().filter(|_| fresh) {
                        let _ = w.write_all(first).and_then(|()| w.write_all(b"\n"));
                    }
                    self.open.insert(key.clone(), w);
                }
                Err(e) => return self.failed(&key.0, &key.1, &e),
            }
        }
        let Some(w) = self.open.get_mut(&key) else {
            return;
        };
        let written = w.write_all(&l.data).and_then(|()| w.write_all(b"\n"));
        if let Err(e) = written {
            self.failed(&key.0, &key.1, &e);
        }
        if l.last {
            if let Some(mut w) = self.open.remove(&key) {
                match w.flush() {
                    Ok(()) => log::debug!("transcripts: {}/{} written", key.0, file_name(&key.1)),
                    Err(e) => self.failed(&key.0, &key.1, &e),
                }
            }
        }
    }

    /// Agent `agent`'s directory, made (with its mark) the first time: a
    /// directory of its own, not a symbolic link to somewhere else.
    fn agent_dir(&mut self, agent: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.dir.join(agent);
        // log_dir must still be the directory it was at the first write
        // (swapped for a link to elsewhere, it is not written through).
        let top = fs::metadata(&self.dir).ok().map(|m| (m.dev(), m.ino()));
        match (self.top, top) {
            (Some(first), Some(now)) if first != now => {
                return Err(std::io::Error::other(
                    "log_dir was replaced while the daemon ran (restart it to take the new one)",
                ))
            }
            _ => {}
        }
        if self.made.contains(agent) {
            // Checked again at every file: an agent's directory swapped for
            // a link after its first transcript is not written through.
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir()) {
                return Ok(dir);
            }
            self.made.remove(agent);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        if self.top.is_none() {
            self.top = fs::metadata(&self.dir).ok().map(|m| (m.dev(), m.ino()));
        }
        if !fs::symlink_metadata(&dir)?.file_type().is_dir() {
            return Err(std::io::Error::other(
                "not a directory of its own (a symbolic link?)",
            ));
        }
        OpenOptions::new()
            .create(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(MARK))?;
        self.made.insert(agent.to_string());
        Ok(dir)
    }

    /// A task's file, for appending: a regular file, never one reached
    /// through a symbolic link, and never a FIFO or device that could
    /// block this thread (opened without blocking, then checked).
    fn open_file(&mut self, agent: &str, task: &str) -> std::io::Result<File> {
        let name = file_name(task);
        let open = |dir: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(dir.join(&name))
        };
        let dir = self.agent_dir(agent)?;
        let f = match open(&dir) {
            // Removed under us (by hand, or by another pruner): made again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.made.remove(agent);
                let dir = self.agent_dir(agent)?;
                open(&dir)?
            }
            r => r?,
        };
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(f)
    }

    fn flush_all(&mut self) {
        let mut failed = None;
        for ((agent, task), w) in &mut self.open {
            if let Err(e) = w.flush() {
                failed = Some((agent.clone(), task.clone(), e));
            }
        }
        if let Some((a, t, e)) = failed {
            self.failed(&a, &t, &e);
        }
    }

    fn failed(&mut self, agent: &str, task: &str, e: &std::io::Error) {
        if self
            .failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.failed_at = Some(Instant::now());
        log::warn!(
            "transcripts: cannot write {}/{agent}/{}: {e} (said once a minute)",
            self.dir.display(),
            file_name(task)
        );
    }

    /// Removes what is older than `retain`, then the oldest until all
    /// that is left fits `max_bytes`. Files still being written are kept.
    fn prune(&mut self) {
        let open: std::collections::HashSet<PathBuf> = self
            .open
            .keys()
            .map(|(a, t)| self.dir.join(a).join(file_name(t)))
            .collect();
        let mut files = transcript_files(&self.dir);
        files.retain(|f| !open.contains(&f.path));
        let now = SystemTime::now();
        let (mut removed, mut freed) = (0u64, 0u64);
        let mut kept = Vec::new();
        for f in files {
            let age = now.duration_since(f.modified).unwrap_or_default();
            if age > self.retain {
                if fs::remove_file(&f.path).is_ok() {
                    removed += 1;
                    freed += f.len;
                }
            } else {
                kept.push(f);
            }
        }
        let mut total: u64 = kept.iter().map(|f| f.len).sum();
        kept.sort_by_key(|f| f.modified);
        for f in kept {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&f.path).is_ok() {
                total -= f.len;
                removed += 1;
                freed += f.len;
            }
        }
        if removed > 0 {
            log::info!(
                "transcripts: removed the {removed} oldest ({freed} bytes) under {}",
                self.dir.display()
            );
        }
    }
}

struct Found {
    path: PathBuf,
    modified: SystemTime,
    len: u64,
}

/// Every `*.ndjson` one level down from `dir` (one directory per agent).
fn transcript_files(dir: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    let Ok(agents) = fs::read_dir(dir) else {
        return out;
    };
    for agent in agents.flatten() {
        // Directories of our own only: not through a symbolic link, and
        // only those the writer marked.
        if !agent.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mark = agent.path().join(MARK);
        if !fs::symlink_metadata(&mark).is_ok_and(|m| m.file_type().is_file()) {
            continue;
        }
        let Ok(files) = fs::read_dir(agent.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "ndjson") {
                continue;
            }
            // `DirEntry::metadata` does not follow a symbolic link.
            let Ok(meta) = f.metadata() else { continue };
            if !meta.file_type().is_file() {
                continue;
            }
            out.push(Found {
                path,
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                len: meta.len(),
            });
        }
    }
    out
}

/// The transcripts of `task_id` under `dir`, one per agent that ran it.
pub(crate) fn find(dir: &Path, task_id: &str) -> Vec<PathBuf> {
    let name = file_name(task_id);
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|a| a.file_type().is_ok_and(|t| t.is_dir()))
        .map(|a| a.path().join(&name))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file()))
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_become_safe_file_names() {
        assert_eq!(file_name("abc-1_2"), "abc-1_2.ndjson");
        assert_eq!(file_name("../x"), "~2e2e2f78.ndjson");
        assert_eq!(file_name(""), "~.ndjson");
        let long = "é".repeat(200);
        let a = file_name(&long);
        let b = file_name(&format!("{long}x"));
        assert!(a.len() <= 200 && a.ends_with(".ndjson"));
        assert_ne!(a, b);
    }
}
