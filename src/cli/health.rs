//! `mister-smith health`: one line and a Nagios exit code, for cron and
//! monitoring.

use std::time::Duration;

use argh::FromArgs;

use crate::cli::gather::{reports, Expect};
use crate::cli::Cli;
use crate::cli::{bound, client};
use crate::config::names::check_token;
use crate::error::{HealthState, SystemError};
use crate::message::failures::{AccountState, HoldReason};
use crate::message::schemas::{AgentState, AgentStatus, HealthReport, LinkState, ReasonCode};
use crate::message::stream_view::StreamLink;

/// check the fleet: prints one line with perfdata after '|'. Exit: 0 OK
/// (every agent healthy), 1 WARNING (an agent starting, restarting, paused
/// or stopped by hand, an account held for rate_limited, overloaded or
/// budget_exhausted, or NATS reconnecting), 2 CRITICAL (an agent gave up,
/// none is healthy, an account held for auth, an agent id runs on two
/// daemons, NATS refuses a daemon's credentials, or an expected daemon did
/// not answer), 3 UNKNOWN (no daemon answered).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "health",
    example = "*/5 * * * * mister-smith health || page-oncall"
)]
pub struct HealthArgs {
    /// only this agent
    #[argh(option, arg_name = "ID")]
    pub agent: Option<String>,

    /// how long to wait for daemons, in ms (default: 1000)
    #[argh(option, arg_name = "MS", default = "1000")]
    pub timeout: u64,

    /// the daemons that must answer: a count, or their ids comma-separated;
    /// one missing is CRITICAL (a killed daemon otherwise just vanishes)
    #[argh(option, arg_name = "N|ID,ID...")]
    pub expect: Option<String>,
}

/// Runs the check and prints its line. The exit code is the check's state
/// even when nobody reads the line (a closed stdout); a line that cannot be
/// written for another reason (a full disk) makes it UNKNOWN.
pub(super) fn run(cli: &Cli, args: &HealthArgs) -> u8 {
    let (state, line) = match check(cli, args) {
        Ok(verdict) => verdict,
        Err(e) => (HealthState::Unknown, format!("MISTER-SMITH UNKNOWN - {e}")),
    };
    // One line, whatever a daemon's answer or an error held: Nagios reads
    // the first line only.
    let line = crate::cli::logging::printable(&line);
    match client::write_stdout(format!("{line}\n").as_bytes()) {
        Ok(()) => state.exit_code(),
        Err(SystemError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            state.exit_code()
        }
        Err(e) => {
            crate::cli::report(&e.to_string());
            HealthState::Unknown.exit_code()
        }
    }
}

fn check(cli: &Cli, args: &HealthArgs) -> Result<(HealthState, String), SystemError> {
    if let Some(id) = &args.agent {
        check_token(id).map_err(|why| SystemError::Usage(format!("agent id {id:?} {why}")))?;
    }
    if args.timeout == 0 {
        return Err(SystemError::Usage(
            "--timeout 0: give the daemons at least 1 ms".into(),
        ));
    }
    let within = Duration::from_millis(args.timeout);
    // Cron and monitoring page on this exit code: it must come, even from
    // a connection that hangs underneath.
    let bound = within + client::CONNECT_MARGIN;
    bound::arm(
        bound,
        bound::Stream::Stdout,
        &format!(
            "MISTER-SMITH UNKNOWN - no answer within {} ms",
            bound.as_millis()
        ),
        HealthState::Unknown.exit_code(),
    );
    let expect = args.expect.as_deref().map(Expect::parse).transpose()?;
    let answered = client::connect(cli).and_then(|mut client| {
        reports(&mut client, args.agent.as_deref(), within, expect.as_ref())
    });
    match answered {
        Ok(reports) => Ok(verdict(&reports, expect.as_ref())),
        // A daemon that was expected and is not there (its socket gone, no
        // answer, frozen) is the very thing --expect is for: CRITICAL, not
        // UNKNOWN. Without a way to ask (NATS down), it stays UNKNOWN.
        Err(e) if expect.is_some() && no_daemon(&e) => Ok(verdict(&[], expect.as_ref())),
        Err(e) => Err(e),
    }
}

/// Whether `e` says that no daemon answered, as opposed to the question
/// never being asked.
fn no_daemon(e: &SystemError) -> bool {
    use crate::transport::TransportError;
    matches!(
        e,
        SystemError::NoAnswer(_)
            | SystemError::Unanswered(_)
            | SystemError::NoResponders { .. }
            | SystemError::Transport(
                TransportError::LocalConnect { .. } | TransportError::LocalTimeout { .. }
            )
    )
}

/// Whether agent `a` is healthy: idle or busy, or on its way back from a
/// routine restart (a recycle, a resumed session, a reload's new spec),
/// which is part of its work and must not page anyone.
fn up(a: &AgentStatus) -> bool {
    match a.status {
        Some(s) if s.is_healthy() => true,
        Some(AgentState::Stopping | AgentState::Initializing) => {
            a.reason_code == Some(ReasonCode::Routine)
        }
        _ => false,
    }
}

/// The Nagios state and line for a set of daemon reports.
pub(super) fn verdict(reports: &[HealthReport], expect: Option<&Expect>) -> (HealthState, String) {
    let agents: Vec<&AgentStatus> = reports.iter().flat_map(|r| r.agents.iter()).collect();
    let total = agents.len();
    let healthy = agents.iter().filter(|a| up(a)).count();
    let restarts: u64 = agents.iter().map(|a| u64::from(a.restarts)).sum();
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    for a in &agents {
        let state = a.status.map_or("unknown", |s| s.as_str());
        let why = a
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let line = format!("{} {state}{why}", a.agent_id);
        if let Some(others) = a.also_on.as_ref().filter(|o| !o.is_empty()) {
            critical.push(format!(
                "{} also runs on daemon {}",
                a.agent_id,
                others.join(", ")
            ));
        }
        match a.status {
            _ if up(a) => {}
            // Down on purpose is worth a look, not a page.
            Some(AgentState::Terminated)
                if a.reason_code == Some(ReasonCode::StoppedByOperator) =>
            {
                warning.push(line)
            }
            Some(AgentState::Terminated) => critical.push(line),
            _ => warning.push(line),
        }
    }
    for r in reports {
        for c in &r.accounts {
            let Some(reason) = c.reason.filter(|_| c.state != AccountState::Open) else {
                continue;
            };
            let until = c
                .until
                .as_deref()
                .map(|u| format!(" until {u}"))
                .unwrap_or_else(|| " (probing)".into());
            let line = format!("account {} held ({reason}){until}", c.name);
            // A login does not come back by itself; a limit does.
            if reason == HoldReason::Auth {
                critical.push(line);
            } else {
                warning.push(line);
            }
        }
        match r.nats {
            LinkState::Reconnecting | LinkState::Closed => {
                warning.push(format!("daemon {} NATS {}", r.daemon_id, r.nats.as_str()));
            }
            // Credentials do not fix themselves: someone must act.
            LinkState::Refused => critical.push(format!(
                "daemon {} NATS refuses its credentials",
                r.daemon_id
            )),
            LinkState::Off | LinkState::Connected => {}
        }
        // Durable tasks wait in the stream (or cannot be stored) meanwhile.
        if let Some(js) = r
            .jetstream
            .as_ref()
            .filter(|j| j.state == StreamLink::Unreachable)
        {
            warning.push(format!(
                "daemon {} JetStream unreachable{}",
                r.daemon_id,
                js.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut answered: Vec<&str> = reports.iter().map(|r| r.daemon_id.as_str()).collect();
    answered.sort_unstable();
    let shared: std::collections::BTreeSet<&str> = answered
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    for id in shared {
        critical.push(format!(
            "daemon id {id} is used by {} daemons",
            answered.iter().filter(|a| **a == id).count()
        ));
    }
    answered.dedup();
    if let Some(gone) = expect.and_then(|e| e.missing(&answered)) {
        critical.insert(0, gone);
    }
    let state = if !critical.is_empty() || (total > 0 && healthy == 0) {
        HealthState::Critical
    } else if !warning.is_empty() {
        HealthState::Warning
    } else {
        HealthState::Ok
    };
    let mut text = format!("{healthy}/{total} agents healthy");
    let details: Vec<String> = critical.into_iter().chain(warning).collect();
    if !details.is_empty() {
        text.push_str("; ");
        text.push_str(&details.join(", "));
    }
    (
        state,
        format!(
            "MISTER-SMITH {} - {text} | agents={total} healthy={healthy} restarts={restarts}{}",
            state.word(),
            // With daemons expected, how many answered is worth a graph.
            if expect.is_some() {
                format!(" daemons={}", reports.len())
            } else {
                String::new()
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(agents: serde_json::Value) -> HealthReport {
        serde_json::from_value(serde_json::json!({
            "daemon_id": "d", "uptime_seconds": 1.0, "nats": "off",
            "queued": 0, "queue_capacity": 10, "agents": agents,
        }))
        .expect("a report")
    }

    fn agent(id: &str, status: &str, reason_code: Option<&str>) -> serde_json::Value {
        serde_json::json!({"agent_id": id, "status": status, "previous_status": null,
            "uptime_seconds": 0.0, "pid": null, "restarts": 0, "resource_usage": null,
            "reason_code": reason_code})
    }

    #[test]
    fn a_routine_restart_is_healthy_and_a_crash_restart_is_not() {
        // The only agent recycling, or restarting to resume a session.
        for state in ["stopping", "initializing"] {
            let r = report(serde_json::json!([agent("a", state, Some("routine"))]));
            let (s, line) = verdict(&[r], None);
            assert_eq!(s, HealthState::Ok, "{line}");
            assert!(line.contains("1/1 agents healthy"), "{line}");
        }
        // The same states for another reason: worth a look, and with no
        // agent healthy, a page.
        let r = report(serde_json::json!([agent("a", "initializing", None)]));
        assert_eq!(verdict(&[r], None).0, HealthState::Critical);
        let r = report(serde_json::json!([
            agent("a", "idle", None),
            agent("b", "error", Some("restarting"))
        ]));
        assert_eq!(verdict(&[r], None).0, HealthState::Warning);
    }
}
