//! `mister-smith result TASK_ID`: a durable task's stored result.

use std::time::{Duration, Instant};

use argh::FromArgs;

use crate::cli::client::{self, print_line};
use crate::cli::{bound, Cli};
use crate::config::JetStreamConfig;
use crate::error::{exit, task_exit_code, SystemError};
use crate::message::envelope::{Envelope, Payload};
use crate::message::router::results_subject;
use crate::transport::jetstream::api::{self, JsError, STREAM_NOT_FOUND};
use crate::transport::nats_transport::NatsClient;
use crate::transport::Transport;

/// print a task's stored result (durable mode, transport.jetstream) as one
/// JSON line: the task_result envelope its agent answered with. Exit: as
/// `send --wait` for that result (0 completed, 1 failed, 75 timeout, 78
/// auth...), 69 no result stored (an unknown id, a task not finished, or a
/// result older than results_ttl_ms), 75 --wait ran out.
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "result",
    example = "mister-smith result 6d54343a-14f7-4428-a5f3-b3d43b183eb8 --wait --timeout 600000"
)]
pub struct ResultArgs {
    /// the task id `send` printed
    #[argh(positional)]
    pub task_id: String,

    /// wait until the task has a result
    #[argh(switch)]
    pub wait: bool,

    /// with --wait, how long to wait in ms (default: the config's
    /// message.default_timeout_ms)
    #[argh(option, arg_name = "MS")]
    pub timeout: Option<u64>,
}

/// The bound of each read of the store.
const LOOKUP: Duration = Duration::from_secs(2);

pub(super) fn run(cli: &Cli, args: &ResultArgs) -> Result<u8, SystemError> {
    if args.task_id.is_empty() || args.task_id.len() > 128 {
        return Err(SystemError::BadInput("a task id is 1 to 128 bytes".into()));
    }
    if args.timeout == Some(0) {
        return Err(SystemError::BadInput(
            "--timeout must be at least 1 ms".into(),
        ));
    }
    if args.timeout.is_some() && !args.wait {
        return Err(SystemError::Usage("--timeout goes with --wait".into()));
    }
    let config = cli.client_config()?;
    let js = config
        .as_ref()
        .and_then(|c| c.transport.jetstream.clone())
        .unwrap_or_default();
    let within = Duration::from_millis(args.timeout.unwrap_or_else(|| {
        config
            .as_ref()
            .map_or(300_000, |c| c.message.default_timeout_ms)
    }));
    client::bound_command(if args.wait { within } else { LOOKUP } + LOOKUP * 2);
    bound::phase(bound::Phase::Connecting);
    // Results are stored in NATS: the local socket has none to give.
    let mut client = client::connect_with(cli, client::Failover::Never)?;
    let describe = client.describe();
    if client.transport.as_nats().is_none() {
        return Err(SystemError::NoAnswer(format!(
            "results are stored in JetStream, on NATS: {describe} has none (give --nats or NATS_URL)"
        )));
    }
    let subject = results_subject(&args.task_id);
    if args.wait {
        // Subscribed before looking, so that a result stored in between is
        // not missed.
        client.transport.subscribe(&subject)?;
        client.flush()?;
    }
    let nats = client
        .transport
        .as_nats()
        .ok_or_else(|| SystemError::NoAnswer(describe.clone()))?;
    bound::phase(bound::Phase::Waiting);
    let mut out = std::io::stdout().lock();
    match look(nats, &js, &args.task_id, &describe) {
        Ok(Some(data)) => return print(&mut out, &data),
        Ok(None) => {}
        // Waiting: a results stream its daemon has not made yet will come
        // (the subscription above hears the result either way).
        Err(SystemError::NoAnswer(_)) if args.wait => {}
        Err(e) => return Err(e),
    }
    if !args.wait {
        return Err(SystemError::NoAnswer(format!(
            "no stored result for task {:?} in stream {} (an unknown id, a task not finished yet, or a result older than results_ttl_ms)",
            args.task_id, js.results_stream
        )));
    }
    let deadline = Instant::now() + within;
    let mut check: Option<Instant> = None;
    loop {
        let until = check.map_or(deadline, |c| c.min(deadline));
        match nats.recv(Some(until)) {
            Ok(m) if m.lost => check = Some(Instant::now() + Duration::from_millis(100)),
            Ok(m) if m.subject == subject => return print(&mut out, &m.data),
            Ok(_) => {}
            Err(_) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if check.is_some_and(|c| c <= now) {
                    check = if nats.is_connected() {
                        // Back after a loss: what was stored meanwhile.
                        if let Some(data) = look(nats, &js, &args.task_id, &describe)? {
                            return print(&mut out, &data);
                        }
                        None
                    } else {
                        Some(now + Duration::from_millis(250))
                    };
                }
            }
        }
    }
    if nats.is_connected() {
        if let Some(data) = look(nats, &js, &args.task_id, &describe)? {
            return print(&mut out, &data);
        }
    }
    Err(SystemError::Unanswered(format!(
        "task {:?}: no result within {} ms",
        args.task_id,
        within.as_millis()
    )))
}

/// The stored result of `task_id`, if there is one.
fn look(
    nats: &NatsClient,
    js: &JetStreamConfig,
    task_id: &str,
    describe: &str,
) -> Result<Option<Vec<u8>>, SystemError> {
    match api::stored_result(nats.conn(), js, task_id, LOOKUP) {
        Ok(s) => Ok(s.map(|s| s.data)),
        Err(e) if e.err_code() == Some(STREAM_NOT_FOUND) => Err(SystemError::NoAnswer(format!(
            "no results stream {} on {describe} (no daemon or send has run in durable mode there)",
            js.results_stream
        ))),
        Err(JsError::NoResponders) => Err(SystemError::NoAnswer(format!(
            "{} on {describe}",
            JsError::NoResponders
        ))),
        Err(e) => Err(SystemError::Unanswered(format!("{e} on {describe}"))),
    }
}

/// Prints a stored result; the exit code is the one `send --wait` gives it.
fn print(out: &mut impl std::io::Write, data: &[u8]) -> Result<u8, SystemError> {
    let env = Envelope::decode(data, usize::MAX).map_err(|why| SystemError::UnreadableAnswer {
        subject: "the results stream".into(),
        why,
    })?;
    print_line(out, data)?;
    Ok(match &env.payload {
        Payload::TaskResult(r) => task_exit_code(r.status, r.error_kind),
        _ => exit::OK,
    })
}
