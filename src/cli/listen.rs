//! `mister-smith listen`: watch the bus.

use argh::FromArgs;

use crate::cli::client::{self, print_line};
use crate::cli::Cli;
use crate::config::names::check_token;
use crate::error::{exit, SystemError};
use crate::message::envelope::{check_trace_id, MessageType};
use crate::message::router::PREFIX;

/// print envelopes as NDJSON on stdout until --count or Ctrl-C (a closed
/// stdout ends it quietly): status changes, progress, results, alerts.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "listen",
    example = "mister-smith listen --type system_alert | jq -r .payload.message"
)]
pub struct ListenArgs {
    /// only this agent's messages
    #[argh(option, arg_name = "ID")]
    pub agent: Option<String>,

    /// only this message type (task_result, agent_status, system_alert ...)
    #[argh(option, arg_name = "T")]
    pub r#type: Option<String>,

    /// only envelopes of this trace id (a task's progress and result, as
    /// sent with send --trace-id)
    #[argh(option, arg_name = "ID")]
    pub trace: Option<String>,

    /// stop after N envelopes
    #[argh(option, arg_name = "N")]
    pub count: Option<u64>,
}

/// The one field `--trace` reads; the rest is passed through unparsed.
#[derive(serde::Deserialize)]
struct Traced<'a> {
    #[serde(borrow, default)]
    trace_id: Option<std::borrow::Cow<'a, str>>,
}

fn traced_as(data: &[u8], trace: &str) -> bool {
    serde_json::from_slice::<Traced<'_>>(data)
        .ok()
        .and_then(|t| t.trace_id)
        .is_some_and(|t| t == trace)
}

pub(super) fn run(cli: &Cli, args: &ListenArgs) -> Result<u8, SystemError> {
    let bad = SystemError::BadInput;
    let agent = match &args.agent {
        Some(a) => {
            check_token(a).map_err(|why| bad(format!("--agent {a:?} {why}")))?;
            a.as_str()
        }
        None => "*",
    };
    let t = match &args.r#type {
        Some(t) => MessageType::parse(t)
            .ok_or_else(|| bad(format!("--type {t:?} is not a message type")))?
            .as_str(),
        None => "*",
    };
    if let Some(t) = &args.trace {
        check_trace_id(t).map_err(|why| bad(format!("--trace {t:?} {why}")))?;
    }
    if args.count == Some(0) {
        return Ok(exit::OK);
    }
    let pattern = format!("{PREFIX}.*.{agent}.{t}");
    let mut client = client::connect(cli)?;
    client.transport.subscribe(&pattern)?;
    client.flush()?;
    log::info!("listening on {pattern} ({})", client.describe());
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    while let Ok(m) = client.transport.recv(None) {
        if m.lost {
            break;
        }
        if m.no_responders {
            continue;
        }
        if args
            .trace
            .as_deref()
            .is_some_and(|t| !traced_as(&m.data, t))
        {
            continue;
        }
        print_line(&mut out, &m.data)?;
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(exit::OK);
        }
    }
    Err(SystemError::Transport(
        crate::transport::TransportError::Closed,
    ))
}
