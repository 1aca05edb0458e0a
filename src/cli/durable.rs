//! `send` in durable mode (`transport.jetstream` in the config): each task
//! is stored in the tasks stream before its id is printed, and `--wait`
//! that misses the live answer (a NATS blip) reads the stored result.
//!
//! Every task is published with `Nats-Msg-Id` = its `message_id`, so
//! publishing it again — after an unanswered publish, or a leader election
//! in a cluster — stores it once. The publishes are pipelined: a batch of
//! `--lines` waits for its acknowledgements together.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::answers::{Queued, RESULT_MARGIN};
use crate::cli::bound;
use crate::cli::client::{print_line, refusal, Client};
use crate::cli::output::Output;
use crate::config::JetStreamConfig;
use crate::error::{exit, task_exit_code, SystemError};
use crate::message::envelope::{Envelope, Payload};
use crate::transport::jetstream::api::{self, JsError};
use crate::transport::nats_transport::NatsClient;
use crate::transport::{Incoming, Transport};

/// How long storing a task may take, elections in a cluster included
/// (about 4 s measured on loopback).
const STORE_BOUND: Duration = Duration::from_secs(10);

/// Publishes not yet acknowledged are sent again this often.
const REPUBLISH: Duration = Duration::from_secs(1);

/// The bound of each read of a stored result.
const LOOKUP: Duration = Duration::from_secs(1);

struct Job {
    task_id: String,
    msg_id: String,
    data: Vec<u8>,
    stored: bool,
    /// Stored, but not where this config's daemons read: why.
    misplaced: Option<String>,
    answered: bool,
    deadline: Instant,
}

fn unstored(task: &str, stream: &str, why: &str) -> String {
    format!("task {task}: not stored in stream {stream}: {why}; it was not sent")
}

/// Stores every task, then (with `--wait`) waits for each one's result.
pub(super) fn send(
    client: &mut Client,
    js: &JetStreamConfig,
    subject: &str,
    envelopes: Vec<Envelope>,
    output: Output,
) -> Result<u8, SystemError> {
    let wait = output.waits();
    let default = Duration::from_millis(client.limits().default_timeout_ms);
    bound::phase(bound::Phase::Publishing);
    let mut jobs = Vec::with_capacity(envelopes.len());
    let mut by_ack: HashMap<String, usize> = HashMap::new();
    let mut by_reply: HashMap<String, usize> = HashMap::new();
    for mut env in envelopes {
        let task_id = match &env.payload {
            Payload::TaskAssignment(t) => t.task_id.clone(),
            _ => String::new(),
        };
        if wait {
            let r = client.reply_subject()?;
            env.reply_to = Some(r.clone());
            by_reply.insert(r, jobs.len());
        }
        let data = client.encode_checked(&env)?;
        let timeout = env.timeout_ms.map_or(default, Duration::from_millis);
        by_ack.insert(client.reply_subject()?, jobs.len());
        jobs.push(Job {
            task_id,
            msg_id: env.message_id.to_string(),
            data,
            stored: false,
            misplaced: None,
            answered: false,
            deadline: Instant::now() + timeout + RESULT_MARGIN,
        });
    }
    let acks: Vec<String> = {
        let mut a: Vec<(usize, String)> = by_ack.iter().map(|(s, i)| (*i, s.clone())).collect();
        a.sort();
        a.into_iter().map(|(_, s)| s).collect()
    };
    let nats = client
        .transport
        .as_nats()
        .ok_or_else(|| SystemError::Usage("durable tasks need NATS".into()))?;

    let mut stdout = std::io::stdout().lock();
    let mut early: Vec<Incoming> = Vec::new();
    let mut last_err: Option<String> = None;
    let mut ensured = false;
    let mut need_streams = false;
    let publish_all = |jobs: &[Job]| -> Result<(), SystemError> {
        for (i, j) in jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| !j.stored && j.misplaced.is_none())
        {
            nats.publish_with_id(subject, &acks[i], &j.msg_id, &j.data)?;
        }
        Ok(())
    };
    publish_all(&jobs)?;
    client.flush()?;
    let store_until = Instant::now() + STORE_BOUND;
    let mut next_try = Instant::now() + REPUBLISH;
    let mut left = jobs.len();
    bound::phase(bound::Phase::Flushing);
    while left > 0 && Instant::now() < store_until {
        let m = match recv_until(nats, next_try.min(store_until)) {
            Some(m) => m,
            None => {
                if Instant::now() < next_try {
                    continue;
                }
                if need_streams && !ensured {
                    match api::ensure_streams(nats.conn(), js, Duration::from_secs(3)) {
                        Ok(()) => ensured = true,
                        Err(e) => last_err = Some(e.to_string()),
                    }
                }
                publish_all(&jobs)?;
                let _ = client.flush_within(REPUBLISH);
                next_try = Instant::now() + REPUBLISH;
                continue;
            }
        };
        if m.lost {
            last_err = Some(format!("lost the connection to {}", client.describe()));
            continue;
        }
        let Some(&i) = by_ack.get(&m.subject) else {
            early.push(m);
            continue;
        };
        if jobs[i].stored || jobs[i].misplaced.is_some() {
            continue;
        }
        let answer = if m.no_responders {
            Err(JsError::NoResponders)
        } else {
            api::parse_pub_ack(&m.data)
        };
        match answer {
            Ok(ack) if ack.stream != js.stream => {
                // Another stream captures these subjects (two configs with
                // different stream names on one NATS): no daemon of this
                // config reads it.
                jobs[i].misplaced = Some(format!(
                    "stored in stream {}, not {} (another config's stream takes these subjects)",
                    ack.stream, js.stream
                ));
                left -= 1;
            }
            Ok(_) => {
                jobs[i].stored = true;
                left -= 1;
                if !wait {
                    print_line(&mut stdout, jobs[i].task_id.as_bytes())?;
                }
            }
            Err(JsError::NoResponders) => {
                // No stream takes the subject yet (or it has no leader for
                // the moment): make the streams, then publish again.
                need_streams = true;
                last_err = Some(JsError::NoResponders.to_string());
                if !ensured {
                    next_try = Instant::now();
                }
            }
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    let mut worst = exit::OK;
    for j in jobs.iter().filter(|j| j.misplaced.is_some()) {
        let why = j.misplaced.clone().unwrap_or_default();
        crate::cli::report(&format!("task {}: {why}", j.task_id));
        worst = exit::worst(worst, exit::TEMPORARY);
    }
    for j in jobs.iter().filter(|j| !j.stored && j.misplaced.is_none()) {
        let why = last_err
            .clone()
            .unwrap_or_else(|| format!("no acknowledgement within {} ms", STORE_BOUND.as_millis()));
        crate::cli::report(&unstored(&j.task_id, &js.stream, &why));
        worst = exit::worst(worst, exit::TEMPORARY);
    }
    if !wait {
        return Ok(worst);
    }

    // The answers: live on each task's reply subject, else from the store.
    bound::phase(bound::Phase::Waiting);
    let mut open = jobs.iter().filter(|j| j.stored).count();
    let mut check_store: Option<Instant> = None;
    let mut pending = early.into_iter();
    while open > 0 {
        let latest = jobs
            .iter()
            .filter(|j| j.stored && !j.answered)
            .map(|j| j.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        let until = check_store.map_or(latest, |t| t.min(latest));
        let next = match pending.next() {
            Some(m) => Some(m),
            None => recv_until(nats, until),
        };
        let Some(m) = next else {
            let now = Instant::now();
            if check_store.is_some_and(|t| t <= now) && now < latest {
                check_store = if nats.is_connected() {
                    // Back: what was stored meanwhile is read, and the live
                    // path works again.
                    open -= from_store(
                        nats,
                        js,
                        &mut jobs,
                        (&mut stdout, output),
                        &mut worst,
                        false,
                    )?;
                    None
                } else {
                    Some(now + Duration::from_millis(250))
                };
                continue;
            }
            // Time is up: a last look in the store before giving up.
            from_store(nats, js, &mut jobs, (&mut stdout, output), &mut worst, true)?;
            break;
        };
        if m.lost {
            check_store = Some(Instant::now() + Duration::from_millis(100));
            continue;
        }
        let Some(&i) = by_reply.get(&m.subject) else {
            continue;
        };
        if jobs[i].answered {
            continue;
        }
        let env = crate::cli::client::decode(&m)?;
        if let Some(err) = refusal(&env) {
            crate::cli::report(&format!("task {}: {err}", jobs[i].task_id));
            jobs[i].answered = true;
            open -= 1;
            worst = exit::worst(worst, err.exit_code());
            continue;
        }
        match &env.payload {
            Payload::TaskProgress(p) => {
                if let Some(ms) = Queued::of(&p.event).and_then(|q| q.timeout_ms) {
                    let d = Instant::now() + Duration::from_millis(ms) + RESULT_MARGIN;
                    jobs[i].deadline = jobs[i].deadline.max(d);
                }
                if output.progress() {
                    print_line(&mut stdout, &m.data)?;
                }
            }
            Payload::TaskResult(r) => {
                output.result(&mut stdout, &m.data, r)?;
                worst = exit::worst(worst, task_exit_code(r.status, r.error_kind));
                jobs[i].answered = true;
                open -= 1;
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

/// Answers, from the results stream, the tasks still waiting; returns how
/// many. `last`: time is up, so a task with no stored result is reported.
fn from_store(
    nats: &NatsClient,
    js: &JetStreamConfig,
    jobs: &mut [Job],
    (out, output): (&mut impl Write, Output),
    worst: &mut u8,
    last: bool,
) -> Result<usize, SystemError> {
    let mut found = 0;
    for j in jobs.iter_mut().filter(|j| j.stored && !j.answered) {
        match api::stored_result(nats.conn(), js, &j.task_id, LOOKUP) {
            Ok(Some(s)) => {
                if let Ok(env) = Envelope::decode(&s.data, usize::MAX) {
                    if let Payload::TaskResult(r) = &env.payload {
                        output.result(out, &s.data, r)?;
                        *worst = exit::worst(*worst, task_exit_code(r.status, r.error_kind));
                        j.answered = true;
                        found += 1;
                        continue;
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                if last {
                    crate::cli::report(&format!(
                        "task {}: no result in time, and its stored result cannot be read: {e}",
                        j.task_id
                    ));
                    *worst = exit::worst(*worst, exit::TEMPORARY);
                }
                continue;
            }
        }
        if last {
            crate::cli::report(&format!(
                "task {}: no result in time (it is stored, and runs when a daemon takes it; `mister-smith result {}` reads its result later)",
                j.task_id, j.task_id
            ));
            *worst = exit::worst(*worst, exit::TEMPORARY);
        }
    }
    Ok(found)
}

/// The next message, or `None` at `deadline` (or if the client is gone).
fn recv_until(nats: &NatsClient, deadline: Instant) -> Option<Incoming> {
    nats.recv(Some(deadline)).ok()
}
