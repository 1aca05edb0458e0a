//! `mister-smith status`: what every agent is doing.

use std::io::Write;
use std::time::Duration;

use argh::FromArgs;

use crate::cli::client::{self, print_line};
use crate::cli::gather::reports;
use crate::cli::Cli;
use crate::config::names::check_token;
use crate::error::{exit, SystemError};
use crate::message::failures::{AccountState, AccountView};
use crate::message::schemas::{AgentStatus, HealthReport};
use crate::message::stream_view::StreamLink;
use crate::transport::TransportKind;

/// show each agent's state, pid, uptime, restarts, tasks done and failed,
/// cost and memory, then each account: open or held (why, until when) and
/// today's spend. Exit: 0, or 69 when no daemon answers or there is no such
/// agent.
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

    /// text (the default), json (a JSON array of agent_status payloads)
    /// or prometheus (the text exposition format, for node_exporter's
    /// textfile collector)
    #[argh(option, arg_name = "FORMAT")]
    pub format: Option<String>,

    /// the same as --format json
    #[argh(switch)]
    pub json: bool,
}

/// What `status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Prometheus,
}

fn format(args: &StatusArgs) -> Result<Format, SystemError> {
    let chosen = match args.format.as_deref() {
        None => None,
        Some("text") => Some(Format::Text),
        Some("json") => Some(Format::Json),
        Some("prometheus") => Some(Format::Prometheus),
        Some(other) => {
            return Err(SystemError::Usage(format!(
                "--format {other:?} is not one of text, json, prometheus"
            )))
        }
    };
    match (chosen, args.json) {
        (None, false) => Ok(Format::Text),
        (None | Some(Format::Json), true) => Ok(Format::Json),
        (Some(f), false) => Ok(f),
        (Some(_), true) => Err(SystemError::Usage(
            "--json is --format json; it cannot be combined with another --format".into(),
        )),
    }
}

pub(super) fn run(cli: &Cli, args: &StatusArgs) -> Result<u8, SystemError> {
    let format = format(args)?;
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
    if format == Format::Json {
        let text = serde_json::to_string(&agents).unwrap_or_else(|_| "[]".into());
        print_line(&mut out, text.as_bytes())?;
        return Ok(exit::OK);
    }
    if format == Format::Prometheus {
        let mut ids: Vec<&str> = reports.iter().map(|r| r.daemon_id.as_str()).collect();
        ids.sort_unstable();
        let mut twice: Vec<&str> = ids
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        twice.dedup();
        for d in twice {
            crate::cli::notice(&format!(
                "several daemons answer as daemon_id {d}: the metrics hold the first one's report"
            ));
        }
        out.write_all(crate::cli::metrics::prometheus(&reports).as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| SystemError::Io {
                what: "write to stdout",
                source,
            })?;
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
        if let Some(acc) = a.account.as_ref().filter(|c| c.state != AccountState::Open) {
            line.push_str(&format!("  HELD ({})", acc.name));
        }
        print_line(&mut out, crate::cli::logging::printable(&line).as_bytes())?;
    }
    // The accounts, one line each per daemon: held ones say why and until
    // when; every one says today's spend.
    let accounts: Vec<(&str, &AccountView)> = reports
        .iter()
        .flat_map(|r| r.accounts.iter().map(move |c| (r.daemon_id.as_str(), c)))
        .collect();
    if !accounts.is_empty() && args.id.is_none() {
        print_line(&mut out, b"")?;
        let header = format!(
            "{:<20} {:<12} {:<10} {:<16} {:<21} {:>11} {:>9}",
            "ACCOUNT", "DAEMON", "STATE", "REASON", "UNTIL", "SPENT TODAY", "BUDGET"
        );
        print_line(&mut out, header.trim_end().as_bytes())?;
        for (daemon, c) in accounts {
            let line = format!(
                "{:<20} {:<12} {:<10} {:<16} {:<21} {:>11} {:>9}",
                c.name,
                daemon,
                c.state.as_str(),
                c.reason.map_or("-", |r| r.as_str()),
                c.until.as_deref().unwrap_or("-"),
                format!("${:.4}", c.spent_today_usd),
                c.daily_budget_usd
                    .map_or("-".to_string(), |b| format!("${b:.4}")),
            );
            print_line(
                &mut out,
                crate::cli::logging::printable(line.trim_end()).as_bytes(),
            )?;
        }
    }
    if args.id.is_none() {
        streams(&mut out, &reports)?;
    }
    out.flush().map_err(|source| SystemError::Io {
        what: "write to stdout",
        source,
    })?;
    Ok(exit::OK)
}

/// Durable mode: each consumer of the tasks stream once (daemons share the
/// `any` ones), with the tasks waiting in the stream for it.
fn streams(out: &mut impl Write, reports: &[HealthReport]) -> Result<(), SystemError> {
    let mut rows: std::collections::BTreeMap<(String, String), (u64, String)> =
        std::collections::BTreeMap::new();
    for r in reports {
        let Some(js) = &r.jetstream else { continue };
        let state = match js.state {
            StreamLink::Ok => "ok".to_string(),
            s => format!("{} ({})", s.as_str(), r.daemon_id),
        };
        for c in &js.consumers {
            let row = rows
                .entry((js.stream.clone(), c.name.clone()))
                .or_insert((0, state.clone()));
            row.0 = row.0.max(c.waiting);
            if js.state != StreamLink::Ok {
                row.1.clone_from(&state);
            }
        }
        if js.consumers.is_empty() {
            rows.entry((js.stream.clone(), "-".into()))
                .or_insert((0, state));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    print_line(out, b"")?;
    let header = format!(
        "{:<24} {:<28} {:>8} {}",
        "STREAM", "CONSUMER", "WAITING", "JETSTREAM"
    );
    print_line(out, header.as_bytes())?;
    for ((stream, name), (waiting, state)) in rows {
        let line = format!("{stream:<24} {name:<28} {waiting:>8} {state}");
        print_line(out, crate::cli::logging::printable(&line).as_bytes())?;
    }
    Ok(())
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
