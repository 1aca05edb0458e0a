//! `throughput`: tasks per second through a daemon with 8 fake-claude echo
//! agents, every task in flight at once over NATS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::bins::Bins;
use crate::daemon::{Daemon, LogTo};
use crate::nats_server::{fast_connect, task_envelope, Nats};
use crate::scratch::Scratch;
use crate::table::Row;

pub(crate) fn throughput(bins: &Bins, work: &Scratch, nats: &Nats, n: usize) -> Vec<Row> {
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
