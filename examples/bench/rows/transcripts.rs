//! `transcripts`: what writing every task's transcript costs a task's round
//! trip when the agent floods the daemon with progress events: two daemons
//! on the bench's NATS, the same agent (fake-claude, 20 turns: 40 progress
//! events a task), one with transcripts (the default) and one with
//! `logs.transcripts: false`, in alternating rounds. The transcripts are
//! where they are by default, in the run directory (on a RAM file system,
//! as `XDG_RUNTIME_DIR` is under systemd).

use std::path::Path;
use std::time::Duration;

use crate::bins::Bins;
use crate::daemon::{Daemon, LogTo};
use crate::nats_server::{fast_connect, Nats};
use crate::rows::rtt::task_loop;
use crate::scratch::Scratch;
use crate::table::{median, p99, Row};

fn chatty(bins: &Bins, dir: &Path, nats: &Nats, id: &str, transcripts: bool) -> Daemon {
    let d = Daemon::start(
        bins,
        dir,
        &serde_json::json!({
            "daemon_id": id,
            "logs": {"transcripts": transcripts},
            "agents": [{"id": id, "command": bins.fake, "env": {"FAKE_CLAUDE_TURNS": "20"}}],
        }),
        Some(&nats.url),
        LogTo::File,
    );
    d.wait_for("NATS connected", 1, Duration::from_secs(20));
    d.wait_for("initializing -> idle", 1, Duration::from_secs(20));
    d
}

pub(crate) fn transcripts(bins: &Bins, work: &Scratch, nats: &Nats, n: usize) -> Vec<Row> {
    let on_dir = work.sub("transcripts-on");
    let on = chatty(bins, &on_dir, nats, "chatty-on", true);
    let off = chatty(
        bins,
        &work.sub("transcripts-off"),
        nats,
        "chatty-off",
        false,
    );
    let nc = fast_connect(&nats.url);
    let (s_on, s_off) = (
        "mister-smith.claude.chatty-on.task_assignment",
        "mister-smith.claude.chatty-off.task_assignment",
    );
    task_loop(&nc, s_on, n / 10 + 1);
    task_loop(&nc, s_off, n / 10 + 1);
    let (mut with, mut without) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..10 {
        with.extend(task_loop(&nc, s_on, n / 10));
        without.extend(task_loop(&nc, s_off, n / 10));
    }
    let written: u64 = std::fs::read_dir(
        crate::scratch::runtime_dir(&on_dir)
            .join("mister-smith")
            .join("chatty-on")
            .join("transcripts")
            .join("chatty-on"),
    )
    .map(|d| {
        d.flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
    .unwrap_or(0);
    on.stop();
    off.stop();
    let (m_with, m_without) = (median(&mut with), median(&mut without));
    vec![Row {
        name: "task round trip with 40 progress events, transcripts on vs off",
        unit: "ms",
        ours: m_with,
        ours_p99: Some(p99(&mut with)),
        floor: Some(m_without),
        note: format!(
            "{n} tasks each, alternating rounds, two daemons on one NATS; floor: logs.transcripts false (p99 {:.3} ms); {:.1} KB of transcript a task",
            p99(&mut without),
            written as f64 / with.len().max(1) as f64 / 1024.0
        ),
    }]
}
