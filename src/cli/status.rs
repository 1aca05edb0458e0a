//! `mister-smith status`: what every agent is doing.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use argh::FromArgs;

use crate::cli::client::{self, print_line, refusal, Client};
use crate::cli::health::Expect;
use crate::cli::Cli;
use crate::config::names::check_token;
use crate::error::{exit, SystemError};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::{agent_subject, system_subject};
use crate::message::schemas::{AgentStatus, HealthReport, SystemHealthCheck};
use crate::transport::TransportKind;

/// show each agent's state, pid, uptime, restarts, tasks done and failed,
/// cost and memory. Exit: 0, or 69 when no daemon answers or there is no
/// such agent.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "status",
    example = "mister-smith status coder-1 --json | jq .[0].status"
)]
pub struct StatusArgs {
    /// only this agent
    #[argh(positional)]
    pub id: Option<String>,

    /// print a JSON array of agent_status payloads
    #[argh(switch)]
    pub json: bool,
}

/// Asks every reachable daemon (or the one running `agent`) for its report.
pub(super) fn reports(
    client: &mut Client,
    agent: Option<&str>,
    within: Duration,
    expect: Option<&Expect>,
) -> Result<Vec<HealthReport>, SystemError> {
    let (subject, payload) = match agent {
        Some(id) => (
            agent_subject("claude", id, MessageType::SystemHealthCheck),
            SystemHealthCheck {
                agent_id: Some(id.to_string()),
                report: None,
            },
        ),
        None => (
            system_subject("all", "status"),
            SystemHealthCheck::default(),
        ),
    };
    let mut env = Envelope::new(Payload::SystemHealthCheck(payload));
    // Over NATS every daemon answers and nothing says how many there are:
    // after an answer, wait a little for more. One daemon (the socket, or
    // the one that runs `agent`) answers once, perhaps in parts.
    let several = client.kind() == TransportKind::Nats && agent.is_none();
    let deadline = Instant::now() + within;
    let reply = client.request(&subject, &mut env)?;
    let left = deadline.saturating_duration_since(Instant::now());
    client.flush_within(left)?;
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    let mut until = deadline;
    while let Some(m) = client.next_until(until)? {
        if m.subject != reply {
            continue;
        }
        if m.no_responders {
            if parts.is_empty() {
                return Err(SystemError::NoResponders { subject });
            }
            continue;
        }
        let answer = client::decode(&m)?;
        if let Some(err) = refusal(&answer) {
            return Err(err);
        }
        let Payload::SystemHealthCheck(SystemHealthCheck {
            report: Some(r), ..
        }) = answer.payload
        else {
            continue;
        };
        parts.entry(r.daemon_id.clone()).or_default().add(r);
        // With daemons expected, wait for them all (until the deadline).
        let answered: Vec<&str> = parts.keys().map(String::as_str).collect();
        let complete =
            parts.values().all(Parts::complete) && expect.is_none_or(|e| e.met(&answered));
        until = match (complete, several) {
            (true, false) => break,
            (true, true) => (Instant::now() + client::MORE_ANSWERS).min(deadline),
            (false, _) => deadline,
        };
    }
    if parts.is_empty() {
        return Err(SystemError::NoAnswer(format!(
            "no daemon answered within {} ms ({})",
            within.as_millis(),
            client.describe()
        )));
    }
    parts.into_values().map(Parts::whole).collect()
}

/// The parts of one daemon's report, as they arrive.
#[derive(Default)]
struct Parts {
    got: BTreeMap<u32, HealthReport>,
    total: u32,
}

impl Parts {
    fn add(&mut self, r: HealthReport) {
        self.total = r.parts.unwrap_or(1);
        self.got.insert(r.part.unwrap_or(1), r);
    }

    fn complete(&self) -> bool {
        u32::try_from(self.got.len()).is_ok_and(|n| n >= self.total)
    }

    /// The report, its parts joined in order.
    fn whole(self) -> Result<HealthReport, SystemError> {
        if !self.complete() {
            let daemon = self
                .got
                .values()
                .next()
                .map(|r| r.daemon_id.clone())
                .unwrap_or_default();
            return Err(SystemError::NoAnswer(format!(
                "daemon {daemon} answered with {} of the {} parts of its report in time",
                self.got.len(),
                self.total
            )));
        }
        let mut parts = self.got.into_values();
        let mut whole = parts
            .next()
            .ok_or_else(|| SystemError::NoAnswer("an empty report".into()))?;
        for p in parts {
            whole.agents.extend(p.agents);
        }
        whole.part = None;
        whole.parts = None;
        Ok(whole)
    }
}

pub(super) fn run(cli: &Cli, args: &StatusArgs) -> Result<u8, SystemError> {
    if let Some(id) = &args.id {
        check_token(id).map_err(|why| SystemError::BadInput(format!("agent id {id:?} {why}")))?;
    }
    let within = Duration::from_millis(2000);
    client::bound_command(within);
    let mut client = client::connect(cli)?;
    // Over NATS nobody answering about one agent means no daemon runs it.
    let on_nats = client.kind() == TransportKind::Nats;
    let reports = reports(&mut client, args.id.as_deref(), within, None).map_err(|e| {
        match (&e, &args.id) {
            (
                SystemError::NoAnswer(_)
                | SystemError::NoResponders { .. }
                | SystemError::Refused { .. },
                Some(id),
            ) if on_nats && e.exit_code() == exit::UNAVAILABLE => {
                SystemError::NoAnswer(format!("no agent {id} answers ({})", client.describe()))
            }
            _ => e,
        }
    })?;
    let agents: Vec<&AgentStatus> = reports.iter().flat_map(|r| r.agents.iter()).collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let text = serde_json::to_string(&agents).unwrap_or_else(|_| "[]".into());
        print_line(&mut out, text.as_bytes())?;
        return Ok(exit::OK);
    }
    let header = format!(
        "{:<20} {:<10} {:<12} {:>7} {:>9} {:>8} {:>6} {:>6} {:>9} {:>8}",
        "AGENT", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "DONE", "FAILED", "COST", "RSS"
    );
    print_line(&mut out, header.trim_end().as_bytes())?;
    for a in agents {
        let line = format!(
            "{:<20} {:<10} {:<12} {:>7} {:>9} {:>8} {:>6} {:>6} {:>9} {:>8}",
            a.agent_id,
            a.agent_type.as_deref().unwrap_or("-"),
            a.status.map_or("-", |s| s.as_str()),
            a.pid.map_or("-".to_string(), |p| p.to_string()),
            if a.uptime_seconds > 0.0 {
                duration(a.uptime_seconds)
            } else {
                "-".into()
            },
            a.restarts,
            a.tasks_completed,
            a.tasks_failed,
            format!("${:.4}", a.total_cost_usd),
            a.resource_usage
                .map_or("-".to_string(), |r| format!("{:.1}M", r.memory_mb)),
        );
        let mut line = line.trim_end().to_string();
        if let Some(others) = a.also_on.as_ref().filter(|o| !o.is_empty()) {
            line.push_str(&format!("  ALSO ON {}", others.join(",")));
        }
        print_line(&mut out, line.as_bytes())?;
    }
    out.flush().map_err(|source| SystemError::Io {
        what: "write to stdout",
        source,
    })?;
    Ok(exit::OK)
}

/// 42s, 3m07s, 5h02m, 2d04h.
fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}
