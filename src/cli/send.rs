//! `mister-smith send`: give an agent work from a shell pipeline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use argh::FromArgs;
use serde_json::Value;
use uuid::Uuid;

use crate::cli::answers::{Queued, RESULT_MARGIN};
use crate::cli::bound;
use crate::cli::client::{self, print_line, refusal, Client};
use crate::cli::output::Output;
use crate::cli::Cli;
use crate::config::names::check_token;
use crate::config::MessageConfig;
use crate::error::{exit, task_exit_code, SystemError};
use crate::message::envelope::{check_meta_entry, check_trace_id, Envelope, MessageType, Payload};
use crate::message::router::agent_subject;
use crate::message::schemas::{check_session_id, TaskAssignment};
use crate::transport::TransportKind;

/// send a task (or any message) to an agent. BODY is the prompt as plain
/// text, or a JSON object as the payload; read from stdin when absent or
/// "-". Prints the task id, or with --wait the task_result envelope as one
/// JSON line. Exit: 0 completed, 1 the task failed (max_turns, max_budget,
/// prompt_too_long, crashed, hung, other), 65 bad input, 69 no such agent or
/// daemon, 75 retry later (timeout, rate_limited, overloaded, api_error,
/// budget_exhausted, cancelled, queue full), 78 the account is not logged in
/// (auth).
#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "send",
    example = "echo \"fix the flaky test\" | mister-smith send --to coder-1 --wait"
)]
pub struct SendArgs {
    /// the message body (default: stdin)
    #[argh(positional)]
    pub body: Option<String>,

    /// agent id, or "any" / "all" agents of --agent-type
    #[argh(option, arg_name = "ID")]
    pub to: Option<String>,

    /// agent type (default: claude); alone, it means any agent of the type
    #[argh(option, arg_name = "TYPE")]
    pub agent_type: Option<String>,

    /// message type (default: task_assignment)
    #[argh(option, arg_name = "T", default = "String::from(\"task_assignment\")")]
    pub r#type: String,

    /// priority, 1 (most urgent) to 10 (default: 5)
    #[argh(option, arg_name = "N", default = "5")]
    pub priority: i64,

    /// task timeout in ms, queued or running (default: the daemon's
    /// message.default_timeout_ms)
    #[argh(option, arg_name = "MS")]
    pub timeout: Option<u64>,

    /// wait for the task_result and print it
    #[argh(switch)]
    pub wait: bool,

    /// print each task_progress envelope as it comes (implies --wait)
    #[argh(switch)]
    pub stream: bool,

    /// text (the result text alone), json (the task_result envelope, as
    /// --wait) or stream-json (progress, then the result, as --stream);
    /// each waits for the result
    #[argh(option, arg_name = "FORMAT")]
    pub output_format: Option<String>,

    /// one task per non-empty input line
    #[argh(switch)]
    pub lines: bool,

    /// correlation id (a UUID) copied into every answer
    #[argh(option, arg_name = "UUID")]
    pub correlation_id: Option<String>,

    /// trace id carried into every envelope and daemon log line about the
    /// task, on every host (default: a new one per task)
    #[argh(option, arg_name = "ID")]
    pub trace_id: Option<String>,

    /// metadata entry KEY=VALUE (repeatable)
    #[argh(option, arg_name = "KEY=VALUE")]
    pub meta: Vec<String>,

    /// retry an overloaded, api_error, crashed or hung task up to N times
    /// (default: the daemon's message.retry_attempts)
    #[argh(option, arg_name = "N")]
    pub retries: Option<u32>,

    /// continue claude session ID (a result's session_id); the result
    /// names the session to continue next
    #[argh(option, arg_name = "ID")]
    pub session: Option<String>,
}

fn bad(message: impl Into<String>) -> SystemError {
    SystemError::BadInput(message.into())
}

/// What is known of one request (one task, or one per agent for `--to all`).
struct Pending {
    task_id: String,
    acks: u32,
    /// A JetStream stream stored it (durable fleet): acknowledged, though
    /// no daemon has it yet.
    stored: bool,
    /// When the last acknowledgement came.
    last_ack: Option<Instant>,
    results: u32,
    done: bool,
    /// When to stop waiting for the results.
    deadline: Instant,
}

pub(super) fn run(cli: &Cli, args: &SendArgs) -> Result<u8, SystemError> {
    let output = Output::of(args.output_format.as_deref(), args.wait, args.stream)
        .map_err(SystemError::Usage)?;
    let (subject, target_id, target_type) = destination(args)?;
    let message_type = MessageType::parse(&args.r#type)
        .ok_or_else(|| bad(format!("--type {:?} is not a message type", args.r#type)))?;
    if !(1..=10).contains(&args.priority) {
        return Err(bad(format!(
            "--priority {} is out of range (1 is most urgent, 10 least)",
            args.priority
        )));
    }
    if args.timeout == Some(0) {
        return Err(bad("--timeout must be at least 1 ms"));
    }
    if let Some(n) = args.retries.filter(|n| *n > crate::config::MAX_RETRIES) {
        return Err(bad(format!(
            "--retries {n} is more than {}",
            crate::config::MAX_RETRIES
        )));
    }
    if let Some(s) = &args.session {
        check_session_id(s).map_err(|why| bad(format!("--session {s:?} {why}")))?;
        if message_type != MessageType::TaskAssignment {
            return Err(SystemError::Usage(format!(
                "--session is for tasks, not for {message_type} messages"
            )));
        }
        if args.to.as_deref() == Some("all") {
            return Err(SystemError::Usage(
                "--session continues one conversation: not with --to all".into(),
            ));
        }
    }
    let correlation_id = match &args.correlation_id {
        None => None,
        Some(s) => Some(
            Uuid::parse_str(s).map_err(|_| bad(format!("--correlation-id {s:?} is not a UUID")))?,
        ),
    };
    if let Some(t) = &args.trace_id {
        check_trace_id(t).map_err(|why| bad(format!("--trace-id {t:?} {why}")))?;
    }
    let mut metadata = std::collections::BTreeMap::new();
    for m in &args.meta {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| bad(format!("--meta {m:?} is not KEY=VALUE")))?;
        check_meta_entry(k, v).map_err(|e| bad(format!("--meta: {e}")))?;
        if metadata.insert(k.to_string(), v.to_string()).is_some() {
            return Err(bad(format!("--meta {k:?} is given twice")));
        }
    }
    if metadata.len() > crate::message::envelope::MAX_META_ENTRIES {
        return Err(bad("too many --meta entries"));
    }

    let limit = cli
        .client_config()?
        .map(|c| c.message.max_message_size)
        .unwrap_or(MessageConfig::default().max_message_size);
    let body = match args.body.as_deref() {
        Some(b) if b != "-" => b.to_string(),
        // One body is one message: reading stops past the largest one.
        _ if !args.lines => read_stdin(Some(limit))?,
        _ => read_stdin(None)?,
    };
    let bodies: Vec<&str> = if args.lines {
        body.lines().filter(|l| !l.trim().is_empty()).collect()
    } else {
        vec![body.as_str()]
    };
    if bodies.is_empty() || bodies.iter().all(|b| b.trim().is_empty()) {
        return Err(bad("nothing to send: the body is empty"));
    }
    let mut envelopes = Vec::with_capacity(bodies.len());
    // claude names its sessions in lower case.
    let session = args.session.as_deref().map(str::to_ascii_lowercase);
    for (n, b) in bodies.iter().enumerate() {
        let payload = payload(message_type, b, args.retries, session.as_deref()).map_err(|e| {
            if args.lines {
                bad(format!("line {}: {e}", n + 1))
            } else {
                e
            }
        })?;
        let mut env = Envelope::new(payload);
        env.priority = args.priority as u8;
        env.timeout_ms = args.timeout;
        env.correlation_id = correlation_id;
        env.trace_id = Some(
            args.trace_id
                .clone()
                .unwrap_or_else(|| env.message_id.simple().to_string()),
        );
        env.target_agent_id.clone_from(&target_id);
        env.target_agent_type = Some(target_type.clone());
        env.metadata.clone_from(&metadata);
        envelopes.push(env);
    }

    // Whatever happens underneath (a NATS client stuck in a reconnect, a
    // daemon that vanished), `send` ends within its bound: scripts rely on
    // it not hanging.
    let longest = args
        .timeout
        .map_or(Duration::from_secs(3600), Duration::from_millis);
    let limit = if message_type == MessageType::TaskAssignment && output.waits() {
        longest + RESULT_MARGIN + client::ACK_WAIT * 3
    } else {
        client::ACK_WAIT * 3
    };
    client::bound_total(limit);
    bound::phase(bound::Phase::Connecting);
    // A durable task is stored in the stream or not sent: the local
    // daemon does not stand in for NATS.
    let durable_task = message_type == MessageType::TaskAssignment
        && args.to.as_deref() != Some("all")
        && cli
            .client_config()?
            .is_some_and(|c| c.transport.jetstream.is_some());
    let mut client = client::connect_with(
        cli,
        if durable_task {
            client::Failover::Never
        } else {
            client::Failover::ToSocket
        },
    )?;
    if message_type != MessageType::TaskAssignment {
        return send_other(&mut client, &subject, envelopes);
    }
    // Durable mode stores tasks for one agent or any of a type; a task for
    // `all` goes to every agent there is now, on core NATS.
    let durable = client
        .config
        .as_ref()
        .and_then(|c| c.transport.jetstream.clone())
        .filter(|_| client.kind() == TransportKind::Nats && args.to.as_deref() != Some("all"));
    if let Some(js) = durable {
        return crate::cli::durable::send(&mut client, &js, &subject, envelopes, output);
    }
    send_tasks(&mut client, &subject, envelopes, args, output)
}

/// Reads stdin as text: at most `limit` bytes (more is bad input, and is
/// not read), and valid UTF-8.
fn read_stdin(limit: Option<usize>) -> Result<String, SystemError> {
    let read_err = |source| SystemError::Io {
        what: "read stdin",
        source,
    };
    let mut bytes = Vec::new();
    match limit {
        Some(limit) => {
            let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            std::io::stdin()
                .lock()
                .take(cap)
                .read_to_end(&mut bytes)
                .map_err(read_err)?;
            if bytes.len() > limit {
                return Err(bad(format!(
                    "the body on stdin is more than max_message_size ({limit} bytes)"
                )));
            }
        }
        None => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(read_err)?;
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "stdin is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The subject, target id and target type for `--to` / `--agent-type`.
fn destination(args: &SendArgs) -> Result<(String, Option<String>, String), SystemError> {
    let agent_type = args
        .agent_type
        .clone()
        .unwrap_or_else(|| "claude".to_string());
    check_token(&agent_type).map_err(|why| bad(format!("--agent-type {agent_type:?} {why}")))?;
    let t = MessageType::parse(&args.r#type).unwrap_or(MessageType::TaskAssignment);
    match (&args.to, &args.agent_type) {
        (None, None) => Err(SystemError::Usage(
            "say where to send: --to ID or --agent-type TYPE".into(),
        )),
        (None, Some(_)) => Ok((agent_subject(&agent_type, "any", t), None, agent_type)),
        (Some(to), _) if to == "any" || to == "all" => {
            Ok((agent_subject(&agent_type, to, t), None, agent_type))
        }
        (Some(to), _) => {
            check_token(to).map_err(|why| bad(format!("--to {to:?} {why}")))?;
            Ok((
                agent_subject(&agent_type, to, t),
                Some(to.clone()),
                agent_type,
            ))
        }
    }
}

/// The payload for one body: plain text is a prompt; a JSON object is the
/// payload itself (a task without `task_id` gets one).
fn payload(
    t: MessageType,
    body: &str,
    retries: Option<u32>,
    session: Option<&str>,
) -> Result<Payload, SystemError> {
    let trimmed = body.trim();
    if trimmed.starts_with('{') {
        let mut v: Value = serde_json::from_str(trimmed)
            .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
        if t == MessageType::TaskAssignment {
            if let Value::Object(m) = &mut v {
                m.entry("task_id")
                    .or_insert_with(|| Value::String(Uuid::new_v4().to_string()));
                if let Some(n) = retries {
                    m.insert("retries".into(), Value::from(n));
                }
                if let Some(s) = session {
                    if let Some(Value::String(b)) = m.get("session_id") {
                        if !b.eq_ignore_ascii_case(s) {
                            return Err(bad(format!(
                                "--session {s} and the body's session_id {b:?} disagree"
                            )));
                        }
                    }
                    m.insert("session_id".into(), Value::from(s));
                }
            }
        }
        return Payload::from_value(t, v).map_err(|e| bad(e.to_string()));
    }
    if t != MessageType::TaskAssignment {
        return Err(bad(format!(
            "the body of a {t} message must be a JSON object"
        )));
    }
    Ok(Payload::TaskAssignment(TaskAssignment {
        task_id: Uuid::new_v4().to_string(),
        prompt: trimmed.to_string(),
        context: None,
        retries,
        session_id: session.map(String::from),
    }))
}

fn send_tasks(
    client: &mut Client,
    subject: &str,
    envelopes: Vec<Envelope>,
    args: &SendArgs,
    output: Output,
) -> Result<u8, SystemError> {
    let wait = output.waits();
    let default = default_timeout(client);
    bound::phase(bound::Phase::Publishing);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    for mut env in envelopes {
        let task_id = match &env.payload {
            Payload::TaskAssignment(t) => t.task_id.clone(),
            _ => String::new(),
        };
        let timeout = env.timeout_ms.map_or(default, Duration::from_millis);
        let reply = client.request(subject, &mut env)?;
        pending.insert(
            reply,
            Pending {
                task_id,
                acks: 0,
                stored: false,
                last_ack: None,
                results: 0,
                done: false,
                deadline: Instant::now() + timeout + RESULT_MARGIN,
            },
        );
    }
    bound::phase(bound::Phase::Flushing);
    client.flush()?;
    bound::phase(bound::Phase::Waiting);

    // `--to all` over NATS: every daemon with agents of the type answers,
    // and nothing says how many there are. One daemon's result can come
    // before another daemon's acknowledgement, so a request whose results
    // match its acknowledgements is done only once no further
    // acknowledgement has come for `MORE_ANSWERS` (as `status` gathers
    // daemons). Over the socket there is one daemon, which acknowledges a
    // request's tasks before starting any.
    let to_all = args.to.as_deref() == Some("all");
    let gather = (to_all && client.kind() == TransportKind::Nats).then_some(client::MORE_ANSWERS);
    // Requests with all their results in, waiting for that quiet, soonest
    // first (a heap: a batch of 20,000 lines must not scan them all for
    // every answer).
    let mut settling: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();

    let mut stdout = std::io::stdout().lock();
    let mut worst = exit::OK;
    let mut last_answer = Instant::now();
    // Counters rather than scans: a batch of 20,000 lines must not cost
    // 20,000 passes over 20,000 tasks.
    let mut unacked = pending.len();
    let mut open = pending.len();
    let mut latest = pending
        .values()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    loop {
        if open == 0 {
            break;
        }
        let waiting_ack = unacked > 0;
        // Acknowledgements come fast; that wait restarts with each answer so
        // a long batch is not cut off while it is being acknowledged.
        let give_up = if waiting_ack {
            last_answer + client::ACK_WAIT
        } else {
            latest
        };
        let mut deadline = give_up;
        if let Some(Reverse((t, _))) = settling.peek() {
            deadline = deadline.min(*t);
        }
        let next = client.next_until(deadline)?;
        if let Some(quiet) = gather {
            let now = Instant::now();
            while let Some(Reverse((t, _))) = settling.peek() {
                if *t > now {
                    break;
                }
                let Some(Reverse((_, key))) = settling.pop() else {
                    break;
                };
                let Some(p) = pending.get_mut(&key) else {
                    continue;
                };
                if p.done || p.results < p.acks {
                    // Another agent acknowledged meanwhile: its result
                    // puts the request back here.
                    continue;
                }
                // Acknowledged (that is how it got here), so only `open`
                // moves; a later acknowledgement pushed the quiet back.
                match p.last_ack.map(|a| a + quiet) {
                    Some(later) if later > now => settling.push(Reverse((later, key))),
                    _ => {
                        p.done = true;
                        open -= 1;
                    }
                }
            }
            // Woken to settle, not to give up.
            if next.is_none() && now < give_up {
                continue;
            }
        }
        let Some(m) = next else {
            if waiting_ack {
                let e = SystemError::Unanswered(format!(
                    "{unacked} task(s) not acknowledged within {} ms on {} ({subject}); they may still run",
                    client::ACK_WAIT.as_millis(),
                    client.describe()
                ));
                crate::cli::report(&e.to_string());
                return Ok(exit::worst(worst, e.exit_code()));
            }
            for p in pending.values_mut().filter(|p| !p.done) {
                crate::cli::report(&format!("task {}: no result in time", p.task_id));
                p.done = true;
                worst = exit::worst(worst, exit::TEMPORARY);
            }
            break;
        };
        last_answer = Instant::now();
        let Some(p) = pending.get_mut(&m.subject) else {
            continue;
        };
        if p.done {
            continue;
        }
        // Marks `p` done and keeps the counters right.
        let finish = |p: &mut Pending, unacked: &mut usize, open: &mut usize| {
            if p.acks == 0 && !p.stored {
                *unacked -= 1;
            }
            p.done = true;
            *open -= 1;
        };
        if m.no_responders {
            crate::cli::report(&format!("no agent answers on {subject} (no responders)"));
            finish(p, &mut unacked, &mut open);
            worst = exit::worst(worst, exit::UNAVAILABLE);
            continue;
        }
        // A JetStream stream that captures the subject (a fleet in
        // durable mode) answers the publish with its acknowledgement: the
        // task is stored, and a daemon answers it when it takes it. For
        // `--to all`, whose tasks go to every agent on core NATS, it is
        // not an agent's acknowledgement.
        if let Ok(stored) = crate::transport::jetstream::api::parse_pub_ack(&m.data) {
            if gather.is_none() && args.to.as_deref() != Some("all") && !p.stored {
                log::debug!("task {} stored (stream seq {})", p.task_id, stored.seq);
                if p.acks == 0 {
                    unacked -= 1;
                }
                p.stored = true;
                if !wait {
                    print_line(&mut stdout, p.task_id.as_bytes())?;
                    finish(p, &mut unacked, &mut open);
                }
            }
            continue;
        }
        let env = client::decode(&m)?;
        if let Some(err) = refusal(&env) {
            crate::cli::report(&format!("task {}: {err}", p.task_id));
            finish(p, &mut unacked, &mut open);
            worst = exit::worst(worst, err.exit_code());
            continue;
        }
        match &env.payload {
            Payload::TaskProgress(progress) => {
                if let Some(queued) = Queued::of(&progress.event) {
                    if p.acks == 0 && !p.stored {
                        unacked -= 1;
                    }
                    p.acks += 1;
                    p.last_ack = Some(Instant::now());
                    // The daemon says how long the task may take.
                    if let Some(ms) = queued.timeout_ms {
                        let d = Instant::now() + Duration::from_millis(ms) + RESULT_MARGIN;
                        p.deadline = p.deadline.max(d);
                        latest = latest.max(p.deadline);
                    }
                    if !wait {
                        if p.acks == 1 {
                            print_line(&mut stdout, p.task_id.as_bytes())?;
                        }
                        finish(p, &mut unacked, &mut open);
                        continue;
                    }
                }
                if output.progress() {
                    print_line(&mut stdout, &m.data)?;
                }
            }
            Payload::TaskResult(r) => {
                let code = task_exit_code(r.status, r.error_kind);
                output.result(&mut stdout, &m.data, r)?;
                p.results += 1;
                // `--to all`: one result per agent that acknowledged. A
                // task to one agent (or any) has one result, whatever the
                // acknowledgements: a durable task delivered again after its
                // daemon died is acknowledged again by the next.
                if !to_all || p.results >= p.acks {
                    let quiet_since = p.last_ack.zip(gather).map(|(t, q)| t + q);
                    match quiet_since.filter(|t| Instant::now() < *t) {
                        Some(t) => settling.push(Reverse((t, m.subject.clone()))),
                        None => finish(p, &mut unacked, &mut open),
                    }
                }
                worst = exit::worst(worst, code);
            }
            _ => {}
        }
    }
    stdout.flush().map_err(|source| SystemError::Io {
        what: "write to stdout",
        source,
    })?;
    Ok(worst)
}

fn default_timeout(client: &Client) -> Duration {
    Duration::from_millis(client.limits().default_timeout_ms)
}

/// Any message that is not a task: publish, print the first answer.
fn send_other(
    client: &mut Client,
    subject: &str,
    envelopes: Vec<Envelope>,
) -> Result<u8, SystemError> {
    let mut stdout = std::io::stdout().lock();
    let mut worst = exit::OK;
    for mut env in envelopes {
        let answers = client.ask(subject, &mut env, Instant::now() + client::ACK_WAIT, None)?;
        let Some(answer) = answers.into_iter().next() else {
            return Err(SystemError::Unanswered(format!(
                "no answer on {subject} within {} ms",
                client::ACK_WAIT.as_millis()
            )));
        };
        if let Some(err) = refusal(&answer) {
            crate::cli::report(&err.to_string());
            worst = exit::worst(worst, err.exit_code());
            continue;
        }
        print_line(&mut stdout, &answer.encode())?;
    }
    Ok(worst)
}
