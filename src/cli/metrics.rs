//! `status --format prometheus`: the daemons' reports in Prometheus's text
//! exposition format (version 0.0.4), for node_exporter's textfile
//! collector or anything else that reads it.
//!
//! Every family is printed with its `# HELP` and `# TYPE` lines, samples or
//! not, so a dashboard finds each name. Counters end in `_total` and count
//! from the daemon's start (a restart of the daemon resets them, which
//! Prometheus's `rate()` handles). A state is a gauge per possible value,
//! 1 for the current one and 0 for the others, so that an alert on
//! `state="error"` sees the 0 too and never goes stale.

use std::fmt::Write;

use crate::message::failures::{AccountState, AccountView};
use crate::message::schemas::{AgentState, AgentStatus, HealthReport, LinkState, TaskStatus};
use crate::message::stream_view::StreamLink;

/// One family: its header, then its samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: String::new(),
        }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.samples.push_str(self.name);
        if !labels.is_empty() {
            self.samples.push('{');
            for (n, (k, v)) in labels.iter().enumerate() {
                if n > 0 {
                    self.samples.push(',');
                }
                let _ = write!(self.samples, "{k}=\"{}\"", escape(v));
            }
            self.samples.push('}');
        }
        let _ = writeln!(self.samples, " {}", number(value));
    }

    fn write_to(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        out.push_str(&self.samples);
    }
}

/// A label value as the format wants it: backslash, quote and newline
/// escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value: integers without a fraction, non-finite ones as the
/// format spells them.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

const LINKS: [LinkState; 5] = [
    LinkState::Off,
    LinkState::Connected,
    LinkState::Reconnecting,
    LinkState::Closed,
    LinkState::Refused,
];

const ACCOUNT_STATES: [AccountState; 3] = [
    AccountState::Open,
    AccountState::Held,
    AccountState::HalfOpen,
];

/// The exposition of `reports`, every family in a fixed order.
///
/// Two daemons that answer with one `daemon_id` (a config deployed twice:
/// `health` is CRITICAL for it) would give every series twice, which the
/// format does not allow: the first one's report is used, and
/// `mister_smith_daemon_instances` says how many answered.
pub(crate) fn prometheus(reports: &[HealthReport]) -> String {
    let mut instances: Vec<(&str, usize)> = Vec::new();
    let mut firsts: Vec<&HealthReport> = Vec::new();
    for r in reports {
        match instances.iter_mut().find(|(d, _)| *d == r.daemon_id) {
            Some((_, n)) => *n += 1,
            None => {
                instances.push((r.daemon_id.as_str(), 1));
                firsts.push(r);
            }
        }
    }
    let mut count = Family::new(
        "mister_smith_daemon_instances",
        "gauge",
        "Daemons that answered with this daemon_id: more than 1 is a fault (one config deployed twice).",
    );
    for (d, n) in &instances {
        count.sample(&[("daemon", d)], *n as f64);
    }
    let mut up = Family::new(
        "mister_smith_daemon_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let mut nats = Family::new(
        "mister_smith_nats_state",
        "gauge",
        "The daemon's NATS connection: 1 for its current state (off when no NATS is configured).",
    );
    let mut queued = Family::new(
        "mister_smith_queue_depth",
        "gauge",
        "Tasks waiting in the daemon's queue for an agent.",
    );
    let mut capacity = Family::new(
        "mister_smith_queue_capacity",
        "gauge",
        "The most tasks the daemon's queue holds (message.queue_capacity).",
    );
    let mut state = Family::new(
        "mister_smith_agent_state",
        "gauge",
        "1 for the agent's current lifecycle state, 0 for the others.",
    );
    let mut restarts = Family::new(
        "mister_smith_agent_restarts_total",
        "counter",
        "Restarts of the agent's process since the daemon started.",
    );
    let mut uptime = Family::new(
        "mister_smith_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent last came up (0 when it is not up).",
    );
    let mut memory = Family::new(
        "mister_smith_agent_memory_bytes",
        "gauge",
        "Resident memory of the agent's process.",
    );
    let mut tasks = Family::new(
        "mister_smith_tasks_total",
        "counter",
        "Tasks the agent ended, by status and error_kind (empty when completed).",
    );
    let mut unrun = Family::new(
        "mister_smith_tasks_unrun_total",
        "counter",
        "Tasks answered before any agent ran them (timed out or cancelled in the queue), by status and error_kind.",
    );
    let mut cost = Family::new(
        "mister_smith_cost_usd_total",
        "counter",
        "The sum of the agent's results' total_cost_usd since the daemon started.",
    );
    let mut held = Family::new(
        "mister_smith_account_held",
        "gauge",
        "1 while the account is held (no task starts on it), 0 when open.",
    );
    let mut account_state = Family::new(
        "mister_smith_account_state",
        "gauge",
        "1 for the account's current state (open, held, half_open), 0 for the others.",
    );
    let mut spent = Family::new(
        "mister_smith_account_spent_today_usd",
        "gauge",
        "The account's spend since 00:00 UTC.",
    );
    let mut budget = Family::new(
        "mister_smith_account_daily_budget_usd",
        "gauge",
        "The account's daily budget, where one is set.",
    );
    let mut js_up = Family::new(
        "mister_smith_jetstream_up",
        "gauge",
        "Durable mode: 1 when the daemon reaches its tasks stream, 0 when not.",
    );
    let mut waiting = Family::new(
        "mister_smith_jetstream_waiting",
        "gauge",
        "Durable mode: tasks waiting in the stream for each consumer.",
    );

    for r in firsts {
        let d = r.daemon_id.as_str();
        up.sample(&[("daemon", d)], r.uptime_seconds);
        for l in LINKS {
            nats.sample(
                &[("daemon", d), ("state", l.as_str())],
                f64::from(u8::from(r.nats == l)),
            );
        }
        queued.sample(&[("daemon", d)], r.queued as f64);
        for c in &r.unrun {
            unrun.sample(
                &[
                    ("daemon", d),
                    ("status", c.status.as_str()),
                    ("error_kind", c.error_kind.map_or("", |k| k.as_str())),
                ],
                c.count as f64,
            );
        }
        capacity.sample(&[("daemon", d)], r.queue_capacity as f64);
        let mut seen = std::collections::HashSet::new();
        for a in &r.agents {
            // One agent id twice in a report (a broken peer) would give
            // its series twice.
            if !seen.insert(a.agent_id.as_str()) {
                continue;
            }
            agent(a, d, &mut state, &mut restarts, &mut uptime, &mut memory);
            let labels = agent_labels(a, d);
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut seen_completed = false;
            for c in &a.task_counts {
                seen_completed |= c.status == TaskStatus::Completed && c.error_kind.is_none();
                let mut with = l.clone();
                with.push(("status", c.status.as_str()));
                with.push(("error_kind", c.error_kind.map_or("", |k| k.as_str())));
                tasks.sample(&with, c.count as f64);
            }
            // Completed at least once (0 until the first), so that a rate
            // of it exists from the start; a report without the breakdown
            // (a daemon of an older version) gives its two totals.
            if !seen_completed {
                let mut with = l.clone();
                with.push(("status", "completed"));
                with.push(("error_kind", ""));
                tasks.sample(&with, a.tasks_completed as f64);
            }
            if a.task_counts.is_empty() && a.tasks_failed > 0 {
                let mut with = l.clone();
                with.push(("status", "failed"));
                with.push(("error_kind", ""));
                tasks.sample(&with, a.tasks_failed as f64);
            }
            cost.sample(&l, a.total_cost_usd);
        }
        for c in &r.accounts {
            account(
                c,
                d,
                (&mut held, &mut account_state, &mut spent, &mut budget),
            );
        }
        if let Some(js) = &r.jetstream {
            js_up.sample(
                &[("daemon", d), ("stream", js.stream.as_str())],
                f64::from(u8::from(js.state == StreamLink::Ok)),
            );
            for c in &js.consumers {
                waiting.sample(
                    &[
                        ("daemon", d),
                        ("stream", js.stream.as_str()),
                        ("consumer", c.name.as_str()),
                    ],
                    c.waiting as f64,
                );
            }
        }
    }

    let mut out = String::new();
    for f in [
        &count,
        &up,
        &nats,
        &queued,
        &capacity,
        &state,
        &restarts,
        &uptime,
        &memory,
        &tasks,
        &unrun,
        &cost,
        &held,
        &account_state,
        &spent,
        &budget,
        &js_up,
        &waiting,
    ] {
        f.write_to(&mut out);
    }
    out
}

/// The labels of every per-agent sample.
fn agent_labels(a: &AgentStatus, daemon: &str) -> Vec<(&'static str, String)> {
    vec![
        ("daemon", daemon.to_string()),
        ("agent", a.agent_id.clone()),
        ("type", a.agent_type.clone().unwrap_or_default()),
        (
            "account",
            a.account
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
        ),
    ]
}

fn agent(
    a: &AgentStatus,
    daemon: &str,
    state: &mut Family,
    restarts: &mut Family,
    uptime: &mut Family,
    memory: &mut Family,
) {
    let labels = agent_labels(a, daemon);
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for s in AgentState::ALL {
        let mut with = l.clone();
        with.push(("state", s.as_str()));
        state.sample(&with, f64::from(u8::from(a.status == Some(s))));
    }
    restarts.sample(&l, f64::from(a.restarts));
    uptime.sample(&l, a.uptime_seconds);
    if let Some(r) = a.resource_usage.filter(|r| r.memory_mb >= 0.0) {
        memory.sample(&l, (r.memory_mb * 1024.0 * 1024.0).round());
    }
}

fn account(
    c: &AccountView,
    daemon: &str,
    (held, state, spent, budget): (&mut Family, &mut Family, &mut Family, &mut Family),
) {
    let l = [("daemon", daemon), ("account", c.name.as_str())];
    held.sample(
        &[
            ("daemon", daemon),
            ("account", c.name.as_str()),
            ("reason", c.reason.map_or("", |r| r.as_str())),
        ],
        f64::from(u8::from(c.state != AccountState::Open)),
    );
    for s in ACCOUNT_STATES {
        state.sample(
            &[
                ("daemon", daemon),
                ("account", c.name.as_str()),
                ("state", s.as_str()),
            ],
            f64::from(u8::from(c.state == s)),
        );
    }
    spent.sample(&l, c.spent_today_usd);
    if let Some(b) = c.daily_budget_usd {
        budget.sample(&l, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_plain() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }

    #[test]
    fn two_daemons_with_one_id_give_each_series_once() {
        let report = |instance: &str| -> HealthReport {
            serde_json::from_value(serde_json::json!({
                "daemon_id": "host-a", "instance": instance, "uptime_seconds": 1.0,
                "nats": "connected", "queued": 0, "queue_capacity": 10,
                // One agent twice, from a broken peer; memory below zero.
                "agents": [{"agent_id": "coder-1", "status": "idle", "agent_type": "claude"},
                           {"agent_id": "coder-1", "status": "busy", "agent_type": "claude",
                            "resource_usage": {"memory_mb": -1e300, "cpu_seconds": 0.0}}],
            }))
            .expect("a report")
        };
        let text = prometheus(&[report("one"), report("two")]);
        let mut samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k))
            .collect();
        let n = samples.len();
        samples.sort_unstable();
        samples.dedup();
        assert_eq!(samples.len(), n, "{text}");
        assert!(text.contains("mister_smith_daemon_instances{daemon=\"host-a\"} 2"));
        assert!(!text.contains("mister_smith_agent_memory_bytes{"), "{text}");
    }

    #[test]
    fn every_family_has_its_header_even_without_samples() {
        let text = prometheus(&[]);
        for name in [
            "mister_smith_agent_state",
            "mister_smith_tasks_total",
            "mister_smith_account_held",
            "mister_smith_jetstream_waiting",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(!text.lines().any(|l| !l.starts_with('#')));
    }
}
