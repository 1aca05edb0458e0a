//! The benchmark harness: mister-smith against the physical floor, measured
//! in the same run on the same machine.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--json] [--only NAME]
//!     [--tasks N] [--against PATH]
//! ```
//!
//! It starts its own `nats-server` on a free port and prints one table, each
//! row "ours / floor = ratio" (medians, and p99 where there are enough
//! samples). `--quick` shrinks every measurement (CI runs it to check the
//! harness works); `--json` prints the rows as JSON instead. Figures for the
//! README come from a full run.
//!
//! Rows:
//! 1. restart latency: a worker that stamps its start, lives 200 ms and exits
//!    1, under `policy: always` with no delay, vs a `while true` shell loop;
//! 2. cold start of 50 plain agents vs 50 started by a shell loop with `&`,
//!    and of 50 fake-claude agents until all answered `initialize`;
//! 3. daemon memory with 50 and 500 children, and threads per child;
//! 4. task round trip over NATS through the daemon and a fake-claude echo
//!    agent vs raw NATS request/reply (both sides flushing), and vs a
//!    minimal relay that carries each task through the same kind of agent;
//! 5. wall time of one `mister-smith send --wait` process vs a minimal raw
//!    NATS client process;
//! 6. the dispatcher's queue in process;
//! 7. tasks per second with 8 agents and 1,000 tasks in flight.

// The harness uses the blocking `nats` crate as a raw client, as the daemon
// does.
#![allow(deprecated)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mister_smith::message::dispatcher::{Origin, Queue, Target, Task};

struct Row {
    name: &'static str,
    unit: &'static str,
    ours: f64,
    ours_p99: Option<f64>,
    floor: Option<f64>,
    note: String,
}

/// The measurements, in the order they run.
const MEASUREMENTS: [&str; 8] = [
    "restart",
    "cold",
    "memory",
    "rtt",
    "send",
    "spawn",
    "dispatcher",
    "throughput",
];

#[derive(argh::FromArgs)]
/// Measure mister-smith against the physical floor, in the same run: starts
/// its own nats-server on a free port and prints one table of medians.
struct Args {
    /// shrink every measurement (a smoke run; CI runs this)
    #[argh(switch)]
    quick: bool,
    /// print the rows as JSON
    #[argh(switch)]
    json: bool,
    /// run one measurement: restart, cold, memory, rtt, send, spawn,
    /// dispatcher or throughput
    #[argh(option)]
    only: Option<String>,
    /// how many tasks the round trip measures (default 2000; 50 with
    /// --quick); more gives steadier medians when comparing builds
    #[argh(option)]
    tasks: Option<usize>,
    /// another build's mister-smith binary, whose daemon runs the round
    /// trip in rounds alternating with ours
    #[argh(option)]
    against: Option<PathBuf>,
}

/// A bad argument: one line on stderr and exit 64 (EX_USAGE), as the
/// main binary does.
fn usage_error(msg: &str) -> ! {
    eprintln!("bench: error: {msg} (see bench --help)");
    std::process::exit(64)
}

fn parse_args(args: &[String]) -> Args {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let parsed = match <Args as argh::FromArgs>::from_args(&["bench"], strs.get(1..).unwrap_or(&[]))
    {
        Ok(a) => a,
        Err(early) => match early.status {
            Ok(()) => {
                println!("{}", early.output.trim_end());
                std::process::exit(0)
            }
            Err(()) => usage_error(early.output.lines().next().unwrap_or("bad arguments")),
        },
    };
    if let Some(o) = &parsed.only {
        if !MEASUREMENTS.contains(&o.as_str()) {
            usage_error(&format!(
                "--only {o}: not a measurement (one of {})",
                MEASUREMENTS.join(", ")
            ));
        }
    }
    if parsed.tasks == Some(0) {
        usage_error("--tasks 0: the round trip needs at least one task");
    }
    if let Some(a) = &parsed.against {
        if !a.is_file() {
            usage_error(&format!("--against {}: no such file", a.display()));
        }
    }
    parsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--raw-client") {
        raw_client(&args);
        return;
    }
    let Args {
        quick,
        json,
        only,
        tasks,
        against,
    } = parse_args(&args);
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let bins = Bins::find();
    let work = Scratch::new();
    let mut rows = Vec::new();

    if want("restart") {
        eprintln!("bench: restart latency");
        rows.extend(restart_latency(&bins, &work, if quick { 5 } else { 40 }));
    }
    if want("cold") {
        eprintln!("bench: cold start");
        let (n, runs) = if quick { (10, 1) } else { (50, 5) };
        rows.extend(cold_start(&bins, &work, n, runs));
    }
    if want("memory") {
        eprintln!("bench: memory");
        let sizes: &[usize] = if quick { &[10, 20] } else { &[50, 500] };
        rows.extend(memory(&bins, &work, sizes));
    }
    let nats = Nats::start(&work);
    if want("rtt") {
        eprintln!("bench: task round trip");
        rows.extend(round_trip(
            &bins,
            &work,
            &nats,
            tasks.unwrap_or(if quick { 50 } else { 2000 }),
            against.as_deref(),
        ));
    }
    if want("send") {
        eprintln!("bench: send process");
        rows.extend(send_process(
            &bins,
            &work,
            &nats,
            if quick { 5 } else { 40 },
        ));
    }
    if want("spawn") {
        eprintln!("bench: spawn");
        rows.extend(spawn_cost(if quick { 20 } else { 300 }));
    }
    if want("dispatcher") {
        eprintln!("bench: dispatcher");
        rows.extend(dispatcher(if quick { 20_000 } else { 1_000_000 }));
    }
    if want("throughput") {
        eprintln!("bench: throughput");
        rows.extend(throughput(
            &bins,
            &work,
            &nats,
            if quick { 100 } else { 1000 },
        ));
    }

    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "unit": r.unit, "ours": r.ours, "ours_p99": r.ours_p99,
                    "floor": r.floor, "ratio": r.floor.map(|f| r.ours / f), "note": r.note,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_table(&rows, quick);
    }
}

fn print_table(rows: &[Row], quick: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "mister-smith bench{} — {} cores, {cpu}",
        if quick {
            " (quick: small samples, not for the README)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measurement | ours | floor | ours / floor | notes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let ours = match r.ours_p99 {
            Some(p) => format!("{} (p99 {})", fmt(r.ours, r.unit), fmt(p, r.unit)),
            None => fmt(r.ours, r.unit),
        };
        let (floor, ratio) = match r.floor {
            Some(f) => (fmt(f, r.unit), format!("{:.2}", r.ours / f)),
            None => ("–".into(), "–".into()),
        };
        println!("| {} | {ours} | {floor} | {ratio} | {} |", r.name, r.note);
    }
}

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.3} ms"),
        "MB" => format!("{v:.2} MB"),
        "/s" => format!("{v:.0}/s"),
        u => format!("{v:.2} {u}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

/// The binaries under test, built in release mode if missing.
struct Bins {
    ms: PathBuf,
    fake: PathBuf,
}

impl Bins {
    fn find() -> Bins {
        let exe = std::env::current_exe().expect("own path");
        // target/release/examples/bench -> target/release
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let bins = Bins {
            ms: dir.join("mister-smith"),
            fake: dir.join("examples").join("fake-claude"),
        };
        // Always (re)build the daemon and the fake agent: `cargo run
        // --example bench` builds only the bench and the library, and a
        // stale daemon from before a change would be measured in silence.
        // Only these two: rebuilding all examples would replace this very
        // binary while it runs (it re-runs itself as the raw client floor).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            "--bin",
            "mister-smith",
            "--example",
            "fake-claude",
        ]);
        // Into the target directory this bench runs from, wherever that is.
        if let Some(target) = dir.parent() {
            cmd.arg("--target-dir").arg(target);
        }
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let built = cmd.status().is_ok_and(|s| s.success());
        assert!(
            bins.ms.exists() && bins.fake.exists(),
            "build mister-smith first: cargo build --release --bins --examples"
        );
        if !built {
            eprintln!("bench: WARNING: could not rebuild mister-smith and fake-claude; measuring the binaries already built");
        }
        if !dir.ends_with("release") {
            eprintln!("bench: WARNING: not a release build; run with --release for real figures");
        }
        bins
    }
}

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        // The release profile aborts on a panic, so a failed run leaves
        // its directory behind (its processes die with it, by PDEATHSIG):
        // remove those of benches no longer running.
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("ms-bench-"))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let p = std::env::temp_dir().join(format!("ms-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch subdir");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Has `cmd`'s process killed when the bench's main thread ends, however
/// it ends: the release profile aborts on a panic, so no destructor would
/// stop a daemon or a nats-server left running.
fn dies_with_bench(cmd: &mut Command) -> &mut Command {
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
struct Daemon {
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
enum LogTo {
    Pipe,
    File,
}

impl Daemon {
    fn start(
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
            .env("XDG_RUNTIME_DIR", dir)
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
    fn wait_for(&self, needle: &str, n: usize, within: Duration) {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// A bash worker: stamps "S <t>" (monotonic enough: $EPOCHREALTIME, no
/// fork), then either sleeps 200 ms and exits 1, or `exec`s a long sleep.
fn worker(dir: &Path, crash: bool) -> PathBuf {
    let path = dir.join(if crash { "crash.sh" } else { "idle.sh" });
    let body = if crash {
        "#!/bin/bash\necho \"S $EPOCHREALTIME\" >> \"$1\"\nsleep 0.2\necho \"E $EPOCHREALTIME\" >> \"$1\"\nexit 1\n"
    } else {
        "#!/bin/bash\necho \"S $EPOCHREALTIME\" >> \"$1\"\nexec sleep 100000\n"
    };
    std::fs::write(&path, body).expect("worker script");
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    path
}

fn stamps(file: &Path) -> Vec<(char, f64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.chars().next()?, v.parse().ok()?))
        })
        .collect()
}

fn gaps_ms(file: &Path) -> Vec<f64> {
    stamps(file)
        .windows(2)
        .filter(|w| w[0].0 == 'E' && w[1].0 == 'S')
        .map(|w| (w[1].1 - w[0].1) * 1000.0)
        .collect()
}

/// Waits until `file` has `n` lines starting with `S`.
fn wait_stamps(file: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while stamps(file).iter().filter(|s| s.0 == 'S').count() < n {
        assert!(
            Instant::now() < deadline,
            "bench: {n} starts not seen in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn restart_latency(bins: &Bins, work: &Scratch, restarts: usize) -> Vec<Row> {
    let dir = work.sub("restart");
    let w = worker(&dir, true);
    let ours_file = dir.join("ours");
    let d = Daemon::start(
        bins,
        &dir,
        &serde_json::json!({"agents": [{"id": "w", "command": w, "args": [ours_file], "protocol": "none",
            "restart": {"policy": "always", "initial_delay_ms": 0, "max_restarts": 1_000_000, "window_ms": 1000}}]}),
        None,
        LogTo::File,
    );
    wait_stamps(&ours_file, restarts + 1, Duration::from_secs(120));
    d.stop();
    let floor_file = dir.join("floor");
    let mut sh = dies_with_bench(&mut Command::new("bash"))
        .args([
            "-c",
            &format!(
                "while true; do {} {}; done",
                w.display(),
                floor_file.display()
            ),
        ])
        .process_group(0)
        .spawn()
        .expect("bash");
    wait_stamps(&floor_file, restarts + 1, Duration::from_secs(120));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::killpg(sh.id() as libc::pid_t, libc::SIGKILL);
    }
    let _ = sh.wait();
    let (mut ours, mut floor) = (gaps_ms(&ours_file), gaps_ms(&floor_file));
    vec![Row {
        name: "restart latency (exit → next start)",
        unit: "ms",
        ours: median(&mut ours),
        ours_p99: Some(p99(&mut ours)),
        floor: Some(median(&mut floor)),
        note: format!("{} restarts; floor: bash while-loop", ours.len()),
    }]
}

use std::os::unix::process::CommandExt;

fn cold_start(bins: &Bins, work: &Scratch, n: usize, runs: usize) -> Vec<Row> {
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    let mut claude = Vec::new();
    for run in 0..runs {
        let dir = work.sub(&format!("cold-{run}"));
        let w = worker(&dir, false);
        let agents: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("w{i}"), "command": w, "args": [dir.join(format!("s{i}"))], "protocol": "none"}))
            .collect();
        let t0 = now_epoch();
        let d = Daemon::start(
            bins,
            &dir,
            &serde_json::json!({"agents": agents}),
            None,
            LogTo::Pipe,
        );
        let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("s{i}"))).collect();
        for f in &files {
            wait_stamps(f, 1, Duration::from_secs(60));
        }
        let last = files
            .iter()
            .filter_map(|f| stamps(f).first().map(|s| s.1))
            .fold(0.0, f64::max);
        ours.push((last - t0) * 1000.0);
        d.stop();

        let fdir = work.sub(&format!("cold-floor-{run}"));
        let script: String = (0..n)
            .map(|i| {
                format!(
                    "{} {} & ",
                    w.display(),
                    fdir.join(format!("s{i}")).display()
                )
            })
            .collect();
        let t0 = now_epoch();
        let mut sh = dies_with_bench(&mut Command::new("bash"))
            .args(["-c", &format!("{script} wait")])
            .process_group(0)
            .spawn()
            .expect("bash");
        let files: Vec<PathBuf> = (0..n).map(|i| fdir.join(format!("s{i}"))).collect();
        for f in &files {
            wait_stamps(f, 1, Duration::from_secs(60));
        }
        let last = files
            .iter()
            .filter_map(|f| stamps(f).first().map(|s| s.1))
            .fold(0.0, f64::max);
        floor.push((last - t0) * 1000.0);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::killpg(sh.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = sh.wait();

        let cdir = work.sub(&format!("cold-claude-{run}"));
        let agents: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("c{i}"), "command": bins.fake}))
            .collect();
        let t0 = Instant::now();
        let d = Daemon::start(
            bins,
            &cdir,
            &serde_json::json!({"agents": agents}),
            None,
            LogTo::Pipe,
        );
        d.wait_for("initializing -> idle", n, Duration::from_secs(60));
        claude.push(t0.elapsed().as_secs_f64() * 1000.0);
        d.stop();
    }
    vec![
        Row {
            name: "cold start, plain agents (all started)",
            unit: "ms",
            ours: median(&mut ours),
            ours_p99: None,
            floor: Some(median(&mut floor)),
            note: format!("{n} agents, median of {runs} runs; floor: bash loop with &"),
        },
        Row {
            name: "cold start, fake-claude agents (all idle)",
            unit: "ms",
            ours: median(&mut claude),
            ours_p99: None,
            floor: None,
            note: format!("{n} agents until initialize answered, median of {runs} runs"),
        },
    ]
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn memory(bins: &Bins, work: &Scratch, sizes: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &n in sizes {
        let dir = work.sub(&format!("mem-{n}"));
        let w = worker(&dir, false);
        let agents: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"id": format!("m{i}"), "command": w, "args": [dir.join(format!("s{i}"))], "protocol": "none"}))
            .collect();
        let d = Daemon::start(
            bins,
            &dir,
            &serde_json::json!({"agents": agents}),
            None,
            LogTo::Pipe,
        );
        d.wait_for("initializing -> idle", n, Duration::from_secs(120));
        // Let the first tracker scan and the startup settle.
        std::thread::sleep(Duration::from_secs(3));
        let rss = status_kb(d.pid(), "VmRSS:") / 1024.0;
        let hwm = status_kb(d.pid(), "VmHWM:") / 1024.0;
        let threads = std::fs::read_dir(format!("/proc/{}/task", d.pid())).map_or(0, |r| r.count());
        d.stop();
        rows.push(Row {
            name: if n == sizes[0] { "daemon RSS, small fleet" } else { "daemon RSS, large fleet" },
            unit: "MB",
            ours: rss,
            ours_p99: None,
            floor: None,
            note: format!(
                "{n} children: VmRSS {rss:.2} MB, VmHWM {hwm:.2} MB, {threads} threads ({:.1} per child)",
                threads as f64 / n as f64
            ),
        });
    }
    rows
}

struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    fn start(_work: &Scratch) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut child = dies_with_bench(&mut Command::new("nats-server"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server (install it: apt-get install nats-server)");
        let err = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(err);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("Server is ready") {
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || for _ in reader.lines() {});
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fast_connect(url: &str) -> nats::Connection {
    nats::Options::new()
        .reconnect_delay_callback(|_| Duration::ZERO)
        .add_root_certificate("/dev/null")
        .connect(url)
        .expect("connect to NATS")
}

fn task_envelope(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "message_type": "task_assignment",
        "payload": {"task_id": prompt, "prompt": prompt},
    }))
    .expect("json")
}

/// A raw NATS responder on its own connection, the floor's other side: it
/// answers every request on `subject` with the request's body (or `reply`)
/// and flushes, as a well-behaved responder does.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Echo {
    fn start(url: &str, subject: &str, reply: Option<&'static [u8]>) -> Echo {
        let responder = fast_connect(url);
        let sub = responder.subscribe(subject).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                if let Ok(m) = sub.next_timeout(Duration::from_millis(100)) {
                    if let Some(r) = &m.reply {
                        let _ = responder.publish(r, reply.unwrap_or(&m.data));
                        let _ = responder.flush();
                    }
                }
            }
        });
        Echo { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// The floor with an agent in it: a minimal relay on its own connection
/// that hands each request's prompt to a fake-claude echo over its pipes,
/// reads up to the result line, and replies with that line, flushing. What
/// any supervisor must at least do to carry a task to a `claude` and back;
/// the daemon does more (an acknowledgement, progress events, status
/// changes, a watchdog, the queue), and that difference is its overhead.
struct Relay {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Relay {
    fn start(bins: &Bins, url: &str, subject: &str) -> Relay {
        let responder = fast_connect(url);
        let sub = responder.subscribe(subject).expect("subscribe");
        responder.flush().expect("flush");
        let mut child = fake_echo(bins);
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut line = String::new();
            while !s2.load(Ordering::Relaxed) {
                let Ok(m) = sub.next_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let task: serde_json::Value = serde_json::from_slice(&m.data).unwrap_or_default();
                let prompt = task["payload"]["prompt"].as_str().unwrap_or_default();
                let mut user = serde_json::to_vec(&serde_json::json!({
                    "type": "user",
                    "message": {"role": "user", "content": prompt},
                }))
                .expect("json");
                user.push(b'\n');
                stdin.write_all(&user).expect("write to the agent");
                loop {
                    line.clear();
                    if out.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.contains("\"type\":\"result\"") {
                        break;
                    }
                }
                if let Some(r) = &m.reply {
                    let _ = responder.publish(r, line.trim_end());
                    let _ = responder.flush();
                }
            }
            drop(stdin);
            let _ = child.wait();
        });
        Relay { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// A fake-claude echo (no delay) in stream-json mode, on pipes.
fn fake_echo(bins: &Bins) -> Child {
    dies_with_bench(&mut Command::new(&bins.fake))
        .args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .env("FAKE_CLAUDE_TURNS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fake-claude")
}

/// Sends `n` tasks one at a time over NATS and returns each round trip in
/// ms (request out → task_result back).
fn task_loop(nc: &nats::Connection, subject: &str, n: usize) -> Vec<f64> {
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&format!("{inbox}.*")).expect("subscribe");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let reply = format!("{inbox}.{i}");
        let t = Instant::now();
        nc.publish_request(subject, &reply, task_envelope(&format!("t{i}")))
            .expect("publish");
        nc.flush().expect("flush");
        loop {
            let m = sub
                .next_timeout(Duration::from_secs(10))
                .expect("an answer");
            if m.subject == reply && m.data.windows(13).any(|w| w == b"\"task_result\"") {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

/// A daemon on `nats` with one fake-claude echo agent (no delay), ready:
/// connected and the agent idle.
fn echo_daemon(bins: &Bins, dir: &Path, nats: &Nats) -> Daemon {
    echo_daemon_as(bins, dir, nats, "echo")
}

/// [`echo_daemon`] with agent id `id`.
fn echo_daemon_as(bins: &Bins, dir: &Path, nats: &Nats, id: &str) -> Daemon {
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

/// `against`: another build of mister-smith, whose daemon runs the same
/// tasks in rounds alternating with ours (to compare two builds within one
/// run, since the drift between runs here is larger than most changes).
fn round_trip(
    bins: &Bins,
    work: &Scratch,
    nats: &Nats,
    n: usize,
    against: Option<&Path>,
) -> Vec<Row> {
    let dir = work.sub("rtt");
    let d = echo_daemon(bins, &dir, nats);
    let other = against.map(|ms| {
        let other_bins = Bins {
            ms: ms.to_path_buf(),
            fake: bins.fake.clone(),
        };
        echo_daemon_as(&other_bins, &work.sub("rtt-against"), nats, "other")
    });
    let other_subject = "mister-smith.claude.other.task_assignment";
    let nc = fast_connect(&nats.url);
    // Floor: raw request/reply between two connections, both flushing.
    let echo = Echo::start(&nats.url, "floor.echo", None);
    // The same with an agent in it.
    let relay = Relay::start(bins, &nats.url, "floor.relay");
    let inbox = nc.new_inbox();
    let rsub = nc.subscribe(&format!("{inbox}.*")).expect("subscribe");
    let mut next = 0usize;
    let mut floor_loop = |subject: &str, count: usize| -> Vec<f64> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            next += 1;
            let reply = format!("{inbox}.{next}");
            let t = Instant::now();
            nc.publish_request(subject, &reply, task_envelope("x"))
                .expect("publish");
            nc.flush().expect("flush");
            let _ = rsub.next_timeout(Duration::from_secs(10)).expect("echo");
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        out
    };
    let subject = "mister-smith.claude.echo.task_assignment";
    task_loop(&nc, subject, n / 10 + 1);
    floor_loop("floor.echo", n / 10 + 1);
    floor_loop("floor.relay", n / 10 + 1);
    // Alternate rounds of ours and the floor, so that the load of this
    // shared machine drifting during the run weighs on both alike.
    let rounds = 10;
    let (mut ours, mut floor, mut relayed) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut theirs = Vec::new();
    // What the daemon and its agent spend over our rounds (they idle
    // through the others).
    let before = Usage::of_tree(d.pid());
    if other.is_some() {
        task_loop(&nc, other_subject, n / 10 + 1);
    }
    for _ in 0..rounds {
        ours.extend(task_loop(&nc, subject, n / rounds));
        if other.is_some() {
            theirs.extend(task_loop(&nc, other_subject, n / rounds));
        }
        floor.extend(floor_loop("floor.echo", n / rounds));
        relayed.extend(floor_loop("floor.relay", n / rounds));
    }
    let spent = usage_since(&Usage::of_tree(d.pid()), &before);
    echo.stop();
    relay.stop();
    d.stop();
    if let Some(o) = other {
        o.stop();
    }
    let mut turn = agent_turns(bins, n);
    let (m_ours, m_floor, m_turn, m_relay) = (
        median(&mut ours),
        median(&mut floor),
        median(&mut turn),
        median(&mut relayed),
    );
    let mut rows = vec![
        Row {
            name: "task round trip (NATS → daemon → agent → task_result)",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p99(&mut ours)),
            floor: Some(m_floor),
            note: format!(
                "{n} tasks, fake-claude echo; floor: raw NATS request/reply, both sides flushing (p99 {:.3} ms); ours − floor = {:.3} ms, of which the agent's own turn {:.3} ms",
                p99(&mut floor),
                m_ours - m_floor,
                m_turn
            ),
        },
        Row {
            name: "task round trip against a minimal relay through the same agent",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p99(&mut ours)),
            floor: Some(m_relay),
            note: format!(
                "floor: one thread on a raw NATS connection writing each task's prompt into a fake-claude echo's stdin, reading to its result line and replying with it, flushing (p99 {:.3} ms); ours − floor = {:.3} ms",
                p99(&mut relayed),
                m_ours - m_relay
            ),
        },
        Row {
            name: "agent turn alone (stdin line → result line)",
            unit: "ms",
            ours: m_turn,
            ours_p99: Some(p99(&mut turn)),
            floor: None,
            note: "the fake-claude echo driven over pipes by the harness, no daemon: part of every round trip above".into(),
        },
    ];
    let per_task = |x: f64| x / ours.len().max(1) as f64;
    let breakdown: Vec<String> = spent
        .iter()
        .map(|(name, u)| {
            format!(
                "{name} {:.0} µs, {:.1} switches",
                per_task(u.cpu_s) * 1e6,
                per_task(u.switches as f64)
            )
        })
        .collect();
    let daemon_cpu: f64 = spent
        .iter()
        .filter(|(name, _)| !name.starts_with("agent"))
        .map(|(_, u)| u.cpu_s)
        .sum();
    let daemon_switches: u64 = spent
        .iter()
        .filter(|(name, _)| !name.starts_with("agent"))
        .map(|(_, u)| u.switches)
        .sum();
    rows.push(Row {
        name: "daemon CPU per task in the round trip",
        unit: "ms",
        ours: per_task(daemon_cpu) * 1000.0,
        ours_p99: None,
        floor: None,
        note: format!(
            "all daemon threads over our rounds (/proc/PID/task/*/stat, in clock ticks: ±{:.3} ms per task over {} tasks), {:.1} context switches per task; by thread: {}",
            // SAFETY: sysconf has no memory-safety preconditions.
            per_task(1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64) * 1000.0,
            ours.len(),
            per_task(daemon_switches as f64),
            breakdown.join("; ")
        ),
    });
    if !theirs.is_empty() {
        let m_theirs = median(&mut theirs);
        rows.push(Row {
            name: "task round trip, the --against build",
            unit: "ms",
            ours: m_theirs,
            ours_p99: Some(p99(&mut theirs)),
            floor: Some(m_ours),
            note: format!(
                "same tasks in alternating rounds; against ours: {:+.3} ms",
                m_theirs - m_ours
            ),
        });
    }
    rows
}

/// CPU time and context switches of one thread name.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    switches: u64,
}

impl Usage {
    /// By thread name: every thread of process `pid` and of its children
    /// (these as "agent <comm>"); threads that share a name add up.
    fn of_tree(pid: u32) -> std::collections::BTreeMap<String, Usage> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut out = std::collections::BTreeMap::new();
        let mut add = |pid: u32, prefix: &str, children: &mut Vec<u32>| {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return;
            };
            for t in tasks.flatten() {
                let dir = t.path();
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                let stat = read("stat");
                // Fields after the parenthesised name: utime and stime are
                // the 12th and 13th.
                let Some((comm, rest)) =
                    stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
                else {
                    continue;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                let switches: u64 = read("status")
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                let u = out
                    .entry(format!("{prefix}{comm}"))
                    .or_insert_with(Usage::default);
                u.cpu_s += (ticks(11) + ticks(12)) / tick;
                u.switches += switches;
                children.extend(
                    read("children")
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        };
        let mut children = Vec::new();
        add(pid, "", &mut children);
        for c in children {
            add(c, "agent ", &mut Vec::new());
        }
        out
    }
}

/// What each thread name spent between two [`Usage::of_tree`]s, most first.
fn usage_since(
    now: &std::collections::BTreeMap<String, Usage>,
    before: &std::collections::BTreeMap<String, Usage>,
) -> Vec<(String, Usage)> {
    let mut out: Vec<(String, Usage)> = now
        .iter()
        .map(|(name, now)| {
            let was = before.get(name).copied().unwrap_or_default();
            let d = Usage {
                cpu_s: (now.cpu_s - was.cpu_s).max(0.0),
                switches: now.switches.saturating_sub(was.switches),
            };
            (name.clone(), d)
        })
        .filter(|(_, d)| d.cpu_s > 0.0 || d.switches > 0)
        .collect();
    out.sort_by(|a, b| b.1.cpu_s.total_cmp(&a.1.cpu_s));
    out
}

/// The fake-claude echo's own turn time, over pipes, without the daemon.
fn agent_turns(bins: &Bins, n: usize) -> Vec<f64> {
    let mut child = fake_echo(bins);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut turns = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let msg = format!(
            "{{\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"t{i}\"}}}}\n"
        );
        stdin.write_all(msg.as_bytes()).expect("write");
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 || line.contains("\"type\":\"result\"") {
                break;
            }
        }
        if i >= n / 10 {
            turns.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(stdin);
    let _ = child.wait();
    turns
}

/// `--raw-client URL SUBJECT`: the floor for one `send` process: connect
/// without a first-attempt delay, publish a request, flush, wait for the
/// reply, exit.
///
/// `--raw-client URL SUBJECT --task`: the same client sending a real task
/// and waiting for its `task_result`, the work `send --wait` does.
fn raw_client(args: &[String]) {
    let (Some(url), Some(subject)) = (args.get(2), args.get(3)) else {
        usage_error("--raw-client needs URL SUBJECT [--task]")
    };
    let task = args.iter().any(|a| a == "--task");
    let nc = fast_connect(url);
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&inbox).expect("subscribe");
    let body = if task {
        task_envelope("hi")
    } else {
        b"ping".to_vec()
    };
    nc.publish_request(subject, &inbox, body).expect("publish");
    nc.flush().expect("flush");
    loop {
        let m = sub.next_timeout(Duration::from_secs(10)).expect("reply");
        if !task || m.data.windows(13).any(|w| w == b"\"task_result\"") {
            break;
        }
    }
    let _ = std::io::stdout().flush();
    // As mister-smith does: leave without running the NATS client's
    // destructors or exit handlers while its threads still run.
    mister_smith::cli::exit_now(0);
}

/// Runs `cmd` once (stdout discarded) and returns its wall time in ms. A
/// failed run is reported and left out, not fatal: figures are medians
/// over the others.
fn timed(what: &str, cmd: &mut Command) -> Option<f64> {
    let t = Instant::now();
    match cmd.stdout(Stdio::null()).status() {
        Ok(s) if s.success() => Some(t.elapsed().as_secs_f64() * 1000.0),
        other => {
            eprintln!("bench: {what} failed: {other:?}");
            None
        }
    }
}

fn send_process(bins: &Bins, work: &Scratch, nats: &Nats, n: usize) -> Vec<Row> {
    let dir = work.sub("send");
    let d = echo_daemon(bins, &dir, nats);
    let echo = Echo::start(&nats.url, "floor.send", Some(b"pong"));
    let me = std::env::current_exe().expect("own path");
    let send = || {
        timed(
            "send",
            Command::new(&bins.ms)
                .args(["--nats", &nats.url, "send", "--to", "echo", "--wait", "hi"])
                .env_remove("MISTER_SMITH_CONFIG")
                .current_dir(&dir),
        )
    };
    let raw_task = || {
        timed(
            "raw task client",
            Command::new(&me).args([
                "--raw-client",
                &nats.url,
                "mister-smith.claude.echo.task_assignment",
                "--task",
            ]),
        )
    };
    let raw = || {
        timed(
            "raw client",
            Command::new(&me).args(["--raw-client", &nats.url, "floor.send"]),
        )
    };
    // Warm both up, then alternate one of each, so that the machine's load
    // drifting during the run weighs on both alike.
    for _ in 0..2 {
        send();
        raw();
        raw_task();
    }
    let (mut ours, mut floor, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        ours.extend(send());
        floor.extend(raw());
        same.extend(raw_task());
    }
    d.stop();
    assert!(floor.len() * 2 >= n, "bench: most raw client runs failed");
    assert!(ours.len() * 2 >= n, "bench: most send runs failed");
    echo.stop();
    let m_ours = median(&mut ours);
    let p_ours = p99(&mut ours);
    vec![
        Row {
            name: "`send --wait` process, wall time",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p_ours),
            floor: Some(median(&mut floor)),
            note: format!("{n} runs; ours includes a whole task round trip through the daemon and an agent; floor: raw client process, request/reply to an in-process echo"),
        },
        Row {
            name: "`send --wait` process vs a raw client sending the same task",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p_ours),
            floor: Some(median(&mut same)),
            note: format!("{n} runs; floor: the same raw client process publishing the same task to the same daemon and waiting for its task_result"),
        },
    ]
}

/// One spawn of `/bin/true`, until it has exec'd, three ways, in this
/// process (threads and a few MB mapped, like the daemon): the daemon's
/// clone path, std's `Command` forced to fork by a `pre_exec` hook (what
/// PDEATHSIG needed before), and std's `posix_spawn` path (no PDEATHSIG).
fn spawn_cost(n: usize) -> Vec<Row> {
    use mister_smith::runtime::spawn;
    use std::os::unix::process::CommandExt;
    // Look like a daemon: some heap in use, some threads.
    let ballast = vec![1u8; 4 << 20];
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            })
        })
        .collect();
    let env = spawn::child_env([], &[]);
    let plan =
        spawn::Plan::new("/bin/true", &[], Path::new("/"), &env, false, Vec::new()).expect("plan");
    let ours = || {
        let t = Instant::now();
        let child = spawn::spawn(&plan).expect("spawn");
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let _ = spawn::wait(child.pid);
        took
    };
    let std_spawn = |fork: bool| {
        let mut c = Command::new("/bin/true");
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if fork {
            // SAFETY: the hook makes one async-signal-safe call.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let t = Instant::now();
        let mut child = c.spawn().expect("spawn");
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let _ = child.wait();
        took
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        a.push(ours());
        b.push(std_spawn(true));
        c.push(std_spawn(false));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(ballast);
    let (m_b, m_c) = (median(&mut b), median(&mut c));
    vec![Row {
        name: "spawn until exec'd (the daemon's clone path)",
        unit: "ms",
        ours: median(&mut a),
        ours_p99: Some(p99(&mut a)),
        floor: Some(m_c),
        note: format!(
            "{n} spawns of /bin/true from a process with 8 threads and 4 MB in use; floor: std posix_spawn (no PDEATHSIG possible); std fork + pre_exec (what PDEATHSIG needed): {m_b:.3} ms"
        ),
    }]
}

fn dispatcher(n: usize) -> Vec<Row> {
    let now = Instant::now();
    let template = Task {
        task_id: String::new(),
        prompt: String::new(),
        context: None,
        priority: 5,
        timeout: Duration::from_secs(3600),
        deadline: now + Duration::from_secs(3600),
        target: Target::Agent(0),
        origin: Origin::default(),
        submitted: now,
        seq: 0,
    };
    let priorities = [5u8, 1, 10, 3, 7];
    // Steady state: a standing queue of 10,000 tasks, then one push and one
    // pop per envelope, priorities mixed, so the heaps do real work.
    let standing = 10_000;
    let run = |agents: usize| -> f64 {
        let mut q = Queue::new(standing + 16);
        let make = |i: usize| {
            let mut t = template.clone();
            t.priority = priorities[i % priorities.len()];
            t.target = if agents == 1 || i % 2 == 0 {
                Target::Agent(i % agents)
            } else {
                Target::Type("claude".into())
            };
            t
        };
        for i in 0..standing {
            let _ = q.push(make(i));
        }
        let t = Instant::now();
        let mut agent = 0;
        for i in 0..n {
            let _ = q.push(make(i));
            while q.pop_for(agent, "claude").is_none() {
                agent = (agent + 1) % agents;
            }
            agent = (agent + 1) % agents;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let one = run(1);
    let eight = run(8);
    vec![
        Row {
            name: "dispatcher queue, push + pop in order",
            unit: "/s",
            ours: one,
            ours_p99: None,
            floor: None,
            note: format!("{n} envelopes through a standing queue of {standing}, priorities 1/3/5/7/10, one agent"),
        },
        Row {
            name: "dispatcher queue, 8 agents",
            unit: "/s",
            ours: eight,
            ours_p99: None,
            floor: None,
            note: format!("{n} envelopes, half to one agent, half to any of the type, 8 agents popping in turn"),
        },
    ]
}

fn throughput(bins: &Bins, work: &Scratch, nats: &Nats, n: usize) -> Vec<Row> {
    let dir = work.sub("tput");
    let agents: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"id": format!("e{i}"), "command": bins.fake, "env": {"FAKE_CLAUDE_TURNS": "0"}}))
        .collect();
    let d = Daemon::start(
        bins,
        &dir,
        &serde_json::json!({"message": {"queue_capacity": 100_000}, "agents": agents}),
        Some(&nats.url),
        LogTo::File,
    );
    d.wait_for("NATS connected", 1, Duration::from_secs(20));
    d.wait_for("initializing -> idle", 8, Duration::from_secs(20));
    let nc = fast_connect(&nats.url);
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&format!("{inbox}.*")).expect("subscribe");
    let t = Instant::now();
    for i in 0..n {
        nc.publish_request(
            "mister-smith.claude.any.task_assignment",
            &format!("{inbox}.{i}"),
            task_envelope(&format!("t{i}")),
        )
        .expect("publish");
    }
    nc.flush().expect("flush");
    let mut done: HashMap<String, ()> = HashMap::new();
    while done.len() < n {
        let m = sub
            .next_timeout(Duration::from_secs(30))
            .expect("results keep coming");
        if m.data.windows(13).any(|w| w == b"\"task_result\"") {
            done.insert(m.subject, ());
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    d.stop();
    vec![Row {
        name: "throughput, 8 agents",
        unit: "/s",
        ours: rate,
        ours_p99: None,
        floor: None,
        note: format!("{n} tasks in flight over NATS, fake-claude echo agents"),
    }]
}
