//! `send`: the wall time of one `mister-smith send --wait` process, against
//! a minimal raw NATS client process (this bench, re-run as `--raw-client`)
//! doing a plain request/reply, and sending the same task.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::args::usage_error;
use crate::bins::Bins;
use crate::daemon::echo_daemon;
use crate::echo::Echo;
use crate::nats_server::{fast_connect, task_envelope, Nats};
use crate::scratch::Scratch;
use crate::table::{median, p99, Row};

/// `--raw-client URL SUBJECT`: the floor for one `send` process: connect
/// without a first-attempt delay, publish a request, flush, wait for the
/// reply, exit.
///
/// `--raw-client URL SUBJECT --task`: the same client sending a real task
/// and waiting for its `task_result`, the work `send --wait` does.
pub(crate) fn raw_client(args: &[String]) {
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
pub(crate) fn timed(what: &str, cmd: &mut Command) -> Option<f64> {
    let t = Instant::now();
    match cmd.stdout(Stdio::null()).status() {
        Ok(s) if s.success() => Some(t.elapsed().as_secs_f64() * 1000.0),
        other => {
            eprintln!("bench: {what} failed: {other:?}");
            None
        }
    }
}

pub(crate) fn send_process(bins: &Bins, work: &Scratch, nats: &Nats, n: usize) -> Vec<Row> {
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
