//! A `mister-smith run` daemon under test: started on a config of the row's
//! choosing, read for readiness through its log, and stopped; and the rule
//! that every process the bench starts dies with it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::Bins;
use crate::nats_server::Nats;

/// Has `cmd`'s process killed when the bench's main thread ends, however
/// it ends: the release profile aborts on a panic, so no destructor would
/// stop a daemon or a nats-server left running.
pub(crate) fn dies_with_bench(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `mister-smith run`, its log read for readiness.
pub(crate) struct Daemon {
    child: Child,
    log: Log,
}

/// Where a bench daemon's log goes.
enum Log {
    /// A pipe, read line by line as they come: for rows that time the
    /// lines themselves (cold start).
    Pipe {
        lines: crossbeam_channel::Receiver<String>,
        seen: std::cell::RefCell<Vec<String>>,
    },
    /// A file, read only while waiting for readiness: for rows timed while
    /// the daemon logs every task, so that this process does not wake for
    /// each line (a sched trace caught that reader taking a vCPU for 36 µs
    /// on the path being measured; the medians did not move measurably
    /// either way, but the bench's own threads stay off that path).
    File(PathBuf),
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum LogTo {
    Pipe,
    File,
}

impl Daemon {
    pub(crate) fn start(
        bins: &Bins,
        dir: &Path,
        config: &serde_json::Value,
        nats: Option<&str>,
        log_to: LogTo,
    ) -> Daemon {
        let cfg = dir.join("mister-smith.json");
        std::fs::write(&cfg, serde_json::to_vec(config).expect("json")).expect("write config");
        let mut cmd = Command::new(&bins.ms);
        dies_with_bench(&mut cmd);
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--socket")
            .arg(dir.join("ms.sock"))
            .arg("run")
            .env("XDG_RUNTIME_DIR", crate::scratch::runtime_dir(dir))
            .env("MISTER_SMITH_LOG", "info")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let log_file = dir.join("daemon.log");
        if log_to == LogTo::File {
            cmd.stderr(std::fs::File::create(&log_file).expect("daemon log file"));
        } else {
            cmd.stderr(Stdio::piped());
        }
        if let Some(url) = nats {
            cmd.env("NATS_URL", url);
        }
        let mut child = cmd.spawn().expect("start the daemon");
        let log = match child.stderr.take() {
            None => Log::File(log_file),
            Some(err) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                std::thread::spawn(move || {
                    for l in BufReader::new(err).lines().map_while(Result::ok) {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                });
                Log::Pipe {
                    lines: rx,
                    seen: std::cell::RefCell::new(Vec::new()),
                }
            }
        };
        Daemon { child, log }
    }

    /// Waits until `n` lines containing `needle` have been logged.
    pub(crate) fn wait_for(&self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let count =
            |lines: &mut dyn Iterator<Item = &str>| lines.filter(|l| l.contains(needle)).count();
        loop {
            let seen = match &self.log {
                Log::Pipe { seen, .. } => count(&mut seen.borrow().iter().map(String::as_str)),
                Log::File(path) => {
                    let text = std::fs::read_to_string(path).unwrap_or_default();
                    count(&mut text.lines())
                }
            };
            if seen >= n {
                return;
            }
            let fail = || panic!("bench: only {seen} of {n} lines {needle:?} within {within:?}");
            match &self.log {
                Log::Pipe { lines, seen } => match lines.recv_deadline(deadline) {
                    Ok(l) => seen.borrow_mut().push(l),
                    Err(_) => fail(),
                },
                Log::File(_) => {
                    if Instant::now() >= deadline {
                        fail();
                    }
                    // A file has no readiness signal; this is setup, not a
                    // timed part of any row.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// A daemon on `nats` with one fake-claude echo agent (no delay), ready:
/// connected and the agent idle.
pub(crate) fn echo_daemon(bins: &Bins, dir: &Path, nats: &Nats) -> Daemon {
    echo_daemon_as(bins, dir, nats, "echo")
}

/// [`echo_daemon`] with agent id `id`.
pub(crate) fn echo_daemon_as(bins: &Bins, dir: &Path, nats: &Nats, id: &str) -> Daemon {
    let d = Daemon::start(
        bins,
        dir,
        &serde_json::json!({"agents": [{"id": id, "command": bins.fake, "env": {"FAKE_CLAUDE_TURNS": "0"}}]}),
        Some(&nats.url),
        LogTo::File,
    );
    d.wait_for("NATS connected", 1, Duration::from_secs(20));
    d.wait_for("initializing -> idle", 1, Duration::from_secs(20));
    d
}
