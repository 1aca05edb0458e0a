//! `durable`: durable mode (`transport.jetstream`) against JetStream's own
//! floor on the same server, a `nats-server -js` of the bench's:
//!
//! * one `mister-smith send` process storing a task (it prints the id once
//!   the stream acknowledged it) vs a raw client process publishing the
//!   same task with a `Nats-Msg-Id` and waiting for the stream's ack (this
//!   bench, re-run as `--raw-js`);
//! * tasks per second through a daemon with 8 echo agents, each task
//!   stored, pulled, run, its result stored and the task acknowledged, vs
//!   a raw pull consumer fetching batches of 100 and acknowledging each
//!   message (the floor of getting work out of a stream at all).

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::args::usage_error;
use crate::bins::Bins;
use crate::daemon::{Daemon, LogTo};
use crate::nats_server::{fast_connect, task_envelope_with_id, Nats};
use crate::rows::send::timed;
use crate::scratch::Scratch;
use crate::table::{median, p99, Row};

/// `--raw-js URL SUBJECT`: the floor of one durable `send`: connect,
/// publish a task with its message id, wait for the stream's ack, exit.
pub(crate) fn raw_js_client(args: &[String]) {
    let (Some(url), Some(subject)) = (args.get(2), args.get(3)) else {
        usage_error("--raw-js needs URL SUBJECT")
    };
    let nc = fast_connect(url);
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&inbox).expect("subscribe");
    let (id, body) = task_envelope_with_id("hi");
    let mut h = nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    nc.publish_with_reply_or_headers(subject, Some(&inbox), Some(&h), body)
        .expect("publish");
    nc.flush().expect("flush");
    let ack = sub
        .next_timeout(Duration::from_secs(10))
        .expect("stream ack");
    assert!(
        ack.data.windows(5).any(|w| w == b"\"seq\""),
        "not stored: {}",
        String::from_utf8_lossy(&ack.data)
    );
    mister_smith::cli::exit_now(0);
}

/// Seconds of CPU a process has used (user and system).
fn cpu(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = st
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    (f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0))
        / 100.0
}

/// A JetStream API request from the bench (setup, not timed).
fn api(nc: &nats::Connection, subject: &str, body: serde_json::Value) {
    let m = nc
        .request_timeout(subject, body.to_string(), Duration::from_secs(5))
        .expect("JetStream API");
    let v: serde_json::Value = serde_json::from_slice(&m.data).expect("API answer");
    assert!(v.get("error").is_none(), "bench: {subject}: {v}");
}

/// Publishes `bodies` to `subject` with ids, at most 256 acks outstanding,
/// every ack checked.
fn store_all(nc: &nats::Connection, subject: &str, bodies: Vec<(String, Vec<u8>)>) {
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&format!("{inbox}.*")).expect("subscribe");
    let total = bodies.len();
    let (mut sent, mut acked) = (0, 0);
    let mut it = bodies.into_iter();
    let check = |m: nats::Message| {
        assert!(
            m.data.windows(5).any(|w| w == b"\"seq\""),
            "bench: not stored"
        );
    };
    while acked < total {
        let before = sent;
        while sent - acked < 256 {
            let Some((id, body)) = it.next() else { break };
            let mut h = nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id);
            let reply = format!("{inbox}.{sent}");
            nc.publish_with_reply_or_headers(subject, Some(&reply), Some(&h), body)
                .expect("publish");
            sent += 1;
        }
        if sent > before {
            nc.flush().expect("flush");
        }
        check(
            sub.next_timeout(Duration::from_secs(10))
                .expect("stream ack"),
        );
        acked += 1;
        while let Some(m) = sub.try_next() {
            check(m);
            acked += 1;
        }
    }
}

pub(crate) fn durable(bins: &Bins, work: &Scratch, n_sends: usize, n_tasks: usize) -> Vec<Row> {
    let t0 = Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "bench: durable: {what} at {:.1} s",
            t0.elapsed().as_secs_f64()
        )
    };
    let nats = Nats::start_js(work);
    let nc = fast_connect(&nats.url);
    let me = std::env::current_exe().expect("own path");

    // One send process vs the raw publish of the same task.
    let dir = work.sub("durable-send");
    let cfg = dir.join("mister-smith.json");
    let config = serde_json::json!({
        "transport": {"nats_url": nats.url, "jetstream": {}},
        "agents": [{"id": "echo", "command": bins.fake}],
    });
    std::fs::write(&cfg, config.to_string()).expect("config");
    let subject = "mister-smith.claude.echo.task_assignment";
    let send = || {
        timed(
            "durable send",
            Command::new(&bins.ms)
                .args([
                    "--config",
                    cfg.to_str().expect("utf-8"),
                    "send",
                    "--to",
                    "echo",
                    "hi",
                ])
                .env_remove("NATS_URL"),
        )
    };
    let raw = || {
        timed(
            "raw JetStream client",
            Command::new(&me).args(["--raw-js", &nats.url, subject]),
        )
    };
    // The first send makes the streams; then both warm up and alternate.
    for _ in 0..3 {
        send();
        raw();
    }
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..n_sends {
        ours.extend(send());
        floor.extend(raw());
    }
    assert!(ours.len() * 2 >= n_sends && floor.len() * 2 >= n_sends);
    phase("sends done");

    // The floor of taking work out of a stream, two ways on one durable
    // pull consumer: the crate's fetch of 100 and an ack each (the
    // method of the published reference figure, 18-19k/s), and the same
    // on the wire protocol by hand (pull requests published, acks
    // fire-and-forget), which is what a client that does nothing else can
    // reach.
    api(
        &nc,
        "$JS.API.STREAM.CREATE.BENCH_FLOOR",
        serde_json::json!({"name": "BENCH_FLOOR", "subjects": ["benchfloor.jobs"],
            "retention": "workqueue", "storage": "file", "num_replicas": 1}),
    );
    api(
        &nc,
        "$JS.API.CONSUMER.DURABLE.CREATE.BENCH_FLOOR.floor",
        serde_json::json!({"stream_name": "BENCH_FLOOR", "config": {"durable_name": "floor",
            "ack_policy": "explicit", "deliver_policy": "all", "replay_policy": "instant",
            "ack_wait": 30_000_000_000u64, "max_ack_pending": -1}}),
    );
    let fill = |prefix: &str| {
        store_all(
            &nc,
            "benchfloor.jobs",
            (0..n_tasks)
                .map(|i| task_envelope_with_id(&format!("{prefix}{i}")))
                .collect(),
        )
    };
    fill("f");
    let n0 = cpu(nats.pid());
    let js = nats::jetstream::new(nc.clone());
    let pull = js
        .pull_subscribe_with_options(
            "benchfloor.jobs",
            &nats::jetstream::PullSubscribeOptions::new().durable_name("floor".into()),
        )
        .expect("bind the floor's consumer");
    let t = Instant::now();
    let mut got = 0;
    while got < n_tasks {
        let batch = nats::jetstream::BatchOptions {
            batch: 100,
            expires: Some(2_000_000_000),
            no_wait: false,
        };
        for m in pull
            .timeout_fetch(batch, Duration::from_secs(10))
            .expect("fetch")
        {
            let m = m.expect("message");
            m.ack().expect("ack");
            got += 1;
        }
    }
    nc.flush().expect("flush");
    let floor_rate = n_tasks as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "bench: durable: floor (crate): nats-server {:.2} s of CPU",
        cpu(nats.pid()) - n0
    );
    drop(pull);
    phase("floor consumed (crate)");

    fill("g");
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&inbox).expect("subscribe");
    let t = Instant::now();
    let mut got = 0;
    while got < n_tasks {
        nc.publish_request(
            "$JS.API.CONSUMER.MSG.NEXT.BENCH_FLOOR.floor",
            &inbox,
            serde_json::json!({"batch": 100, "expires": 2_000_000_000u64}).to_string(),
        )
        .expect("pull");
        nc.flush().expect("flush");
        let mut in_batch = 0;
        while in_batch < 100 && got < n_tasks {
            let m = sub.next_timeout(Duration::from_secs(10)).expect("message");
            if let Some(reply) = m.reply.as_deref() {
                nc.publish(reply, b"+ACK").expect("ack");
                got += 1;
                in_batch += 1;
            }
        }
    }
    nc.flush().expect("flush");
    let wire_rate = n_tasks as f64 / t.elapsed().as_secs_f64();
    phase("floor consumed (wire)");

    // Durable tasks through the daemon, out of a stream as deep as the
    // floor's: 5,000 tasks stored before the daemon starts (the streams
    // were made by the first `send` above), then pulled, run on 8 echo
    // agents, results stored, tasks acknowledged. Timed from the first
    // result to the last, so the daemon's start is not in the figure and
    // neither is the storing (the floor's stream was filled untimed too).
    let tasks: Vec<(String, Vec<u8>)> = (0..n_tasks)
        .map(|i| task_envelope_with_id(&format!("d{i}")))
        .collect();
    store_all(&nc, "mister-smith.claude.any.task_assignment", tasks);
    let results = nc
        .subscribe("mister-smith.results.*")
        .expect("subscribe results");
    nc.flush().expect("flush");
    let dir = work.sub("durable-tput");
    let agents: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"id": format!("e{i}"), "command": bins.fake, "env": {"FAKE_CLAUDE_TURNS": "0"}}))
        .collect();
    let d = Daemon::start(
        bins,
        &dir,
        &serde_json::json!({"transport": {"jetstream": {}}, "agents": agents}),
        Some(&nats.url),
        LogTo::File,
    );
    let mut done = HashSet::new();
    let first = results
        .next_timeout(Duration::from_secs(30))
        .expect("a first result");
    done.insert(first.subject);
    let (d0, n0) = (cpu(d.pid()), cpu(nats.pid()));
    let t = Instant::now();
    while done.len() < n_tasks {
        let m = results
            .next_timeout(Duration::from_secs(30))
            .expect("results keep coming");
        done.insert(m.subject);
    }
    let ours_rate = (n_tasks - 1) as f64 / t.elapsed().as_secs_f64();
    phase("ours done");
    eprintln!(
        "bench: durable: cpu daemon {:.2} s, nats-server {:.2} s",
        cpu(d.pid()) - d0,
        cpu(nats.pid()) - n0
    );
    // Where the daemon's time went, thread by thread.
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", d.pid())) {
        let mut threads: Vec<(f64, String)> = dir
            .flatten()
            .filter_map(|t| {
                let st = std::fs::read_to_string(t.path().join("stat")).ok()?;
                let name = st.split('(').nth(1)?.split(')').next()?.to_string();
                let f: Vec<&str> = st.rsplit(')').next()?.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
                Some((ticks / 100.0, name))
            })
            .filter(|(s, _)| *s > 0.0)
            .collect();
        threads.sort_by(|a, b| b.0.total_cmp(&a.0));
        let shown: Vec<String> = threads.iter().map(|(s, n)| format!("{n} {s:.2}")).collect();
        eprintln!(
            "bench: durable: daemon threads (s of CPU since start): {}",
            shown.join(", ")
        );
    }
    d.stop();
    phase("daemon stopped");

    let m_ours = median(&mut ours);
    let p_ours = p99(&mut ours);
    vec![
        Row {
            name: "durable `send` process, wall time (stored, not waited for)",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p_ours),
            floor: Some(median(&mut floor)),
            note: format!("{n_sends} runs; floor: a raw client process publishing the same task with Nats-Msg-Id and waiting for the stream's ack"),
        },
        Row {
            name: "durable throughput, 8 echo agents",
            unit: "/s",
            ours: ours_rate,
            ours_p99: None,
            floor: Some(floor_rate),
            note: format!("{n_tasks} tasks stored before the daemon starts, then pulled, run, results stored, acked (first result to last); floor: the nats crate's pull consumer, fetch 100 and an ack each, same server (by hand on the wire: {wire_rate:.0}/s)"),
        },
    ]
}
