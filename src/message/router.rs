//! The router: subjects (DESIGN.md §6), the table of this daemon's agents,
//! and what happens to each message that arrives on any transport.
//!
//! ```text
//! mister-smith.{agent_type}.{agent_id}.{message_type}   one agent
//! mister-smith.{agent_type}.any.{message_type}          one agent of the type (queue group)
//! mister-smith.{agent_type}.all.{message_type}          every agent of the type
//! mister-smith.system.{daemon_id|all}.{op}              a daemon's control plane
//! ```
//!
//! Inbound handling runs on the transport threads. Tasks go to the
//! dispatcher, control requests to the supervisor (answered within a bound);
//! events (progress, results, statuses, alerts — ours or another daemon's)
//! are not requests and are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::json;
use uuid::Uuid;

use crate::config::{Config, Protocol};
use crate::message::dispatcher::{DispatchCmd, DispatchSink, Origin, Refusal, Target, Task};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::error::MessageError;
use crate::message::schemas::{
    check_subject, check_token, CommandType, RawEvent, SystemAlert, SystemHealthCheck,
    TaskProgress, TaskResult, TaskStatus,
};
use crate::runtime::supervisor::{Command, Event};
use crate::transport::hub::Outbox;
use crate::transport::nats_transport::DaemonSubs;

pub const PREFIX: &str = "mister-smith";

/// How long a transport thread waits for the supervisor's answer.
const CONTROL_WAIT: Duration = Duration::from_secs(5);

/// The subject of message type `t` for agent `id` of type `agent_type`.
pub fn agent_subject(agent_type: &str, id: &str, t: MessageType) -> String {
    format!("{PREFIX}.{agent_type}.{id}.{t}")
}

/// The subject of `op` on a daemon's control plane (`daemon` may be `all`).
pub fn system_subject(daemon: &str, op: &str) -> String {
    format!("{PREFIX}.system.{daemon}.{op}")
}

/// Where a subject points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Agent {
        id: String,
        message_type: MessageType,
    },
    Any {
        agent_type: String,
        message_type: MessageType,
    },
    All {
        agent_type: String,
        message_type: MessageType,
    },
    /// `mister-smith.system.{this daemon or all}.{op}`.
    System { op: String },
}

/// Parses a subject addressed to daemon `daemon_id`; `None` for anything
/// that is not ours to answer.
pub fn parse_subject(subject: &str, daemon_id: &str) -> Option<Dest> {
    let mut parts = subject.split('.');
    let (Some(PREFIX), Some(a), Some(b), Some(c), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if a == "system" {
        return (b == daemon_id || b == "all").then(|| Dest::System { op: c.to_string() });
    }
    let message_type = MessageType::parse(c)?;
    check_token(a).ok()?;
    match b {
        "any" => Some(Dest::Any {
            agent_type: a.into(),
            message_type,
        }),
        "all" => Some(Dest::All {
            agent_type: a.into(),
            message_type,
        }),
        id => {
            check_token(id).ok()?;
            Some(Dest::Agent {
                id: id.into(),
                message_type,
            })
        }
    }
}

/// One agent, as far as routing is concerned.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: String,
    pub agent_type: String,
    pub protocol: Protocol,
}

/// This daemon's agents by id and by type.
#[derive(Debug)]
pub struct RoutingTable {
    pub daemon_id: String,
    pub agents: Vec<Route>,
    by_id: HashMap<String, usize>,
    by_type: HashMap<String, Vec<usize>>,
}

impl RoutingTable {
    pub fn new(config: &Config) -> RoutingTable {
        let agents: Vec<Route> = config
            .agents
            .iter()
            .map(|a| Route {
                id: a.id.clone(),
                agent_type: a.agent_type.clone(),
                protocol: a.protocol,
            })
            .collect();
        let mut by_id = HashMap::new();
        let mut by_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in agents.iter().enumerate() {
            by_id.insert(a.id.clone(), i);
            if a.protocol != Protocol::None {
                by_type.entry(a.agent_type.clone()).or_default().push(i);
            }
        }
        RoutingTable {
            daemon_id: config.daemon_id.clone(),
            agents,
            by_id,
            by_type,
        }
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn subject(&self, i: usize, t: MessageType) -> String {
        let a = &self.agents[i];
        agent_subject(&a.agent_type, &a.id, t)
    }

    /// The NATS subscriptions that reach this daemon's agents and control
    /// plane. `any` is a queue group, so one daemon of several takes each
    /// task.
    pub fn daemon_subs(&self) -> DaemonSubs {
        let mut subs: DaemonSubs = self
            .agents
            .iter()
            .map(|a| (format!("{PREFIX}.*.{}.*", a.id), None))
            .collect();
        // Only types with agents that take tasks: a daemon must not take
        // its share of `any` tasks it can only refuse.
        let mut types: Vec<&String> = self.by_type.keys().collect();
        types.sort();
        for t in types {
            subs.push((
                format!("{PREFIX}.{t}.any.{}", MessageType::TaskAssignment),
                Some(format!("{PREFIX}.{t}")),
            ));
            subs.push((format!("{PREFIX}.{t}.all.*"), None));
        }
        subs.push((system_subject(&self.daemon_id, "*"), None));
        subs.push((system_subject("all", "*"), None));
        subs
    }
}

/// A `system_alert` envelope.
pub fn alert(
    severity: &str,
    code: &str,
    message: String,
    agent_id: Option<&str>,
    task_id: Option<&str>,
) -> Envelope {
    Envelope::new(Payload::SystemAlert(SystemAlert {
        severity: severity.into(),
        code: code.into(),
        message,
        agent_id: agent_id.map(String::from),
        task_id: task_id.map(String::from),
        stderr: None,
    }))
}

/// Copies the correlation fields of a request into its answer.
pub fn answer_to(mut env: Envelope, origin: &Origin) -> Envelope {
    env.correlation_id = origin.correlation_id;
    env.trace_id.clone_from(&origin.trace_id);
    env.target_agent_id.clone_from(&origin.source_agent_id);
    env
}

/// Handles every message that reaches the daemon.
#[derive(Clone)]
pub struct Inbound {
    pub table: Arc<RoutingTable>,
    pub dispatch: Sender<DispatchCmd>,
    pub events: Sender<Event>,
    pub outbox: Outbox,
    pub max_size: usize,
    pub default_timeout: Duration,
}

impl Inbound {
    pub fn handle(&self, subject: &str, reply: Option<&str>, data: &[u8]) {
        // A reply subject is published to as is: it must be a literal,
        // well-formed subject (the local socket passes what a client wrote).
        let reply = match reply {
            Some(r) if check_subject(r).is_err() => {
                log::warn!("ignoring a malformed reply subject on {subject}");
                None
            }
            r => r,
        };
        let Some(dest) = parse_subject(subject, &self.table.daemon_id) else {
            log::debug!("ignoring a message on {subject}");
            return;
        };
        // Our own events come back to us only through other daemons' or
        // clients' eyes; skip the decode for types that are never requests.
        if let Dest::Agent { message_type, .. }
        | Dest::Any { message_type, .. }
        | Dest::All { message_type, .. } = &dest
        {
            if matches!(
                message_type,
                MessageType::TaskProgress
                    | MessageType::TaskResult
                    | MessageType::SystemAlert
                    | MessageType::AgentRegistration
            ) {
                return;
            }
        }
        let env = match Envelope::decode(data, self.max_size) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("refused a message on {subject}: {e}");
                if let Some(r) = reply {
                    self.outbox
                        .reply(r, &alert("error", "bad_request", e.to_string(), None, None));
                }
                return;
            }
        };
        let origin = Origin {
            reply_to: env.reply_to.clone().or_else(|| reply.map(String::from)),
            correlation_id: Some(env.correlation_id.unwrap_or(env.message_id)),
            trace_id: env.trace_id.clone(),
            source_agent_id: env.source_agent_id.clone(),
        };
        let result = match (&dest, &env.payload) {
            (Dest::System { op }, _) => self.system(op, &env, &origin),
            (_, Payload::TaskAssignment(_)) | (_, Payload::AgentCommand(_))
                if env.message_type() != dest_type(&dest) =>
            {
                Err(MessageError::field(
                    "message_type",
                    format!(
                        "{} does not match the subject {subject}",
                        env.message_type()
                    ),
                ))
            }
            (_, Payload::TaskAssignment(t)) => self.task(&dest, &env, t, &origin),
            (Dest::Agent { id, .. }, Payload::AgentCommand(c)) => {
                self.control(id, c.command_type, c, &env, &origin)
            }
            (Dest::Agent { id, .. }, Payload::AgentStatus(_)) => match &origin.reply_to {
                Some(_) => self.status_of(id, &origin),
                None => Ok(()),
            },
            (Dest::Agent { id, .. }, Payload::SystemHealthCheck(_)) => {
                self.report(Some(id), &origin)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            let code = match e {
                MessageError::NoRoute { .. } => "no_route",
                _ => "bad_request",
            };
            log::warn!("refused a message on {subject}: {e}");
            if let Some(r) = &origin.reply_to {
                let task_id = match &env.payload {
                    Payload::TaskAssignment(t) => Some(t.task_id.as_str()),
                    _ => None,
                };
                self.outbox.reply(
                    r,
                    &answer_to(alert("error", code, e.to_string(), None, task_id), &origin),
                );
            }
        }
    }

    fn task(
        &self,
        dest: &Dest,
        env: &Envelope,
        t: &crate::message::schemas::TaskAssignment,
        origin: &Origin,
    ) -> Result<(), MessageError> {
        let targets: Vec<Target> = match dest {
            Dest::Agent { id, .. } => {
                let i = self
                    .table
                    .find(id)
                    .ok_or_else(|| MessageError::NoRoute { target: id.clone() })?;
                if self.table.agents[i].protocol == Protocol::None {
                    return Err(MessageError::field(
                        "target_agent_id",
                        format!("agent {id} is a plain process (protocol none) and takes no tasks"),
                    ));
                }
                vec![Target::Agent(i)]
            }
            Dest::Any { agent_type, .. } => {
                if !self.table.by_type.contains_key(agent_type) {
                    return Err(MessageError::NoRoute {
                        target: format!("of type {agent_type}"),
                    });
                }
                vec![Target::Type(agent_type.clone())]
            }
            Dest::All { agent_type, .. } => {
                let list =
                    self.table
                        .by_type
                        .get(agent_type)
                        .ok_or_else(|| MessageError::NoRoute {
                            target: format!("of type {agent_type}"),
                        })?;
                list.iter().map(|&i| Target::Agent(i)).collect()
            }
            Dest::System { .. } => return Ok(()),
        };
        let timeout = env
            .timeout_ms
            .map_or(self.default_timeout, Duration::from_millis);
        let now = Instant::now();
        let mut tasks = Vec::with_capacity(targets.len());
        for target in targets {
            tasks.push(Task {
                task_id: t.task_id.clone(),
                prompt: t.prompt.clone(),
                context: t.context.clone(),
                priority: env.priority,
                timeout,
                deadline: now + timeout,
                target,
                origin: origin.clone(),
                submitted: now,
                seq: 0,
            });
        }
        let _ = self.dispatch.send(DispatchCmd::Submit(tasks));
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.events.send(Event::Command(make(tx))).ok()?;
        rx.recv_timeout(CONTROL_WAIT).ok()
    }

    fn control(
        &self,
        id: &str,
        op: CommandType,
        c: &crate::message::schemas::AgentCommand,
        env: &Envelope,
        origin: &Origin,
    ) -> Result<(), MessageError> {
        if op == CommandType::Shutdown {
            let _ = self.events.send(Event::Command(Command::Shutdown));
            if let Some(r) = &origin.reply_to {
                let e = alert(
                    "info",
                    "shutting_down",
                    format!("daemon {} is shutting down", self.table.daemon_id),
                    None,
                    None,
                );
                self.outbox.reply(r, &answer_to(e, origin));
            }
            return Ok(());
        }
        let i = self
            .table
            .find(id)
            .ok_or_else(|| MessageError::NoRoute { target: id.into() })?;
        if op == CommandType::Execute {
            let prompt = c
                .prompt
                .clone()
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| MessageError::field("payload.prompt", "execute needs a prompt"))?;
            let t = crate::message::schemas::TaskAssignment {
                task_id: c
                    .task_id
                    .clone()
                    .unwrap_or_else(|| Uuid::new_v4().to_string()),
                prompt,
                context: None,
            };
            let dest = Dest::Agent {
                id: id.into(),
                message_type: MessageType::TaskAssignment,
            };
            return self.task(&dest, env, &t, origin);
        }
        let answer = self.ask(|reply| Command::Control {
            agent: i,
            op,
            reply,
        });
        let Some(r) = &origin.reply_to else {
            return Ok(());
        };
        let env = match answer {
            Some(Ok(status)) => Envelope::new(Payload::AgentStatus(status)),
            Some(Err(why)) => alert("error", "refused", why, Some(id), None),
            None => alert(
                "error",
                "unavailable",
                "the daemon did not answer in time".into(),
                Some(id),
                None,
            ),
        };
        self.outbox.reply(r, &answer_to(env, origin));
        Ok(())
    }

    fn status_of(&self, id: &str, origin: &Origin) -> Result<(), MessageError> {
        let i = self
            .table
            .find(id)
            .ok_or_else(|| MessageError::NoRoute { target: id.into() })?;
        let Some(report) = self.ask(|reply| Command::Report {
            agent: Some(i),
            reply,
        }) else {
            return Ok(());
        };
        if let (Some(r), Some(status)) = (&origin.reply_to, report.agents.into_iter().next()) {
            self.outbox.reply(
                r,
                &answer_to(Envelope::new(Payload::AgentStatus(status)), origin),
            );
        }
        Ok(())
    }

    fn report(&self, agent: Option<&str>, origin: &Origin) -> Result<(), MessageError> {
        let i = match agent {
            Some(id) => Some(
                self.table
                    .find(id)
                    .ok_or_else(|| MessageError::NoRoute { target: id.into() })?,
            ),
            None => None,
        };
        let Some(report) = self.ask(|reply| Command::Report { agent: i, reply }) else {
            return Ok(());
        };
        if let Some(r) = &origin.reply_to {
            let env = Envelope::new(Payload::SystemHealthCheck(SystemHealthCheck {
                agent_id: agent.map(String::from),
                report: Some(report),
            }));
            self.outbox.reply(r, &answer_to(env, origin));
        }
        Ok(())
    }

    fn system(&self, op: &str, env: &Envelope, origin: &Origin) -> Result<(), MessageError> {
        match (op, &env.payload) {
            ("status" | "health", Payload::SystemHealthCheck(h)) => {
                self.report(h.agent_id.as_deref(), origin)
            }
            ("status" | "health", _) => self.report(None, origin),
            ("agent_command", Payload::AgentCommand(c)) => {
                let id = c.agent_id.clone().or_else(|| env.target_agent_id.clone());
                match (c.command_type, id) {
                    (CommandType::Shutdown, _) => {
                        self.control("", CommandType::Shutdown, c, env, origin)
                    }
                    (op, Some(id)) => self.control(&id, op, c, env, origin),
                    (_, None) => Err(MessageError::field("payload.agent_id", "is required")),
                }
            }
            ("agent_command", _) => Err(MessageError::field(
                "message_type",
                "agent_command expected",
            )),
            _ => Ok(()),
        }
    }
}

fn dest_type(d: &Dest) -> MessageType {
    match d {
        Dest::Agent { message_type, .. }
        | Dest::Any { message_type, .. }
        | Dest::All { message_type, .. } => *message_type,
        Dest::System { .. } => MessageType::SystemHealthCheck,
    }
}

/// Answers tasks on behalf of the dispatcher: acceptance, refusal, expiry,
/// cancellation, and hands assignments to the supervisor.
pub struct DaemonSink {
    pub table: Arc<RoutingTable>,
    pub events: Sender<Event>,
    pub outbox: Outbox,
}

impl DaemonSink {
    fn agent_id(&self, t: &Task) -> String {
        match &t.target {
            Target::Agent(i) => self.table.agents[*i].id.clone(),
            Target::Type(_) => "any".into(),
        }
    }

    fn subject(&self, t: &Task, mt: MessageType) -> String {
        match &t.target {
            Target::Agent(i) => self.table.subject(*i, mt),
            Target::Type(ty) => agent_subject(ty, "any", mt),
        }
    }

    fn finish(&self, t: &Task, status: TaskStatus, why: String) {
        let result = TaskResult {
            task_id: t.task_id.clone(),
            agent_id: self.agent_id(t),
            status,
            result: None,
            errors: Some(vec![why]),
            duration_ms: t.submitted.elapsed().as_millis() as u64,
            num_turns: None,
            total_cost_usd: None,
            usage: None,
            session_id: None,
        };
        let env = answer_to(Envelope::new(Payload::TaskResult(result)), &t.origin);
        self.outbox.publish_and_reply(
            &self.subject(t, MessageType::TaskResult),
            t.origin.reply_to.as_deref(),
            &env,
        );
    }
}

impl DispatchSink for DaemonSink {
    fn assign(&self, agent: usize, task: Task) {
        let _ = self.events.send(Event::Assign(agent, Box::new(task)));
    }

    fn accepted(&self, t: &Task, position: usize) {
        if let Some(r) = &t.origin.reply_to {
            let progress = TaskProgress {
                task_id: t.task_id.clone(),
                agent_id: self.agent_id(t),
                event: RawEvent::from_value(&json!({
                    "type": "system",
                    "subtype": "queued",
                    "position": position,
                    "timeout_ms": t.timeout.as_millis() as u64,
                })),
            };
            self.outbox.reply(
                r,
                &answer_to(Envelope::new(Payload::TaskProgress(progress)), &t.origin),
            );
        }
    }

    fn refused(&self, t: &Task, why: Refusal) {
        let (code, message) = match why {
            Refusal::Full { capacity } => (
                "queue_full",
                format!("the queue is full ({capacity} tasks); retry later"),
            ),
            Refusal::ShuttingDown => (
                "shutting_down",
                "the daemon is shutting down; retry later".to_string(),
            ),
        };
        log::warn!("task {} refused: {message}", t.task_id);
        if let Some(r) = &t.origin.reply_to {
            let id = self.agent_id(t);
            self.outbox.reply(
                r,
                &answer_to(
                    alert("error", code, message, Some(&id), Some(&t.task_id)),
                    &t.origin,
                ),
            );
        }
    }

    fn expired(&self, t: &Task) {
        self.finish(
            t,
            TaskStatus::Timeout,
            format!(
                "timed out after {} ms waiting in the queue",
                t.timeout.as_millis()
            ),
        );
    }

    fn cancelled(&self, t: &Task) {
        self.finish(
            t,
            TaskStatus::Cancelled,
            "the daemon shut down before the task started".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_into_destinations() {
        let t = MessageType::TaskAssignment;
        assert_eq!(
            parse_subject("mister-smith.claude.coder-1.task_assignment", "h"),
            Some(Dest::Agent {
                id: "coder-1".into(),
                message_type: t
            })
        );
        assert_eq!(
            parse_subject("mister-smith.claude.any.task_assignment", "h"),
            Some(Dest::Any {
                agent_type: "claude".into(),
                message_type: t
            })
        );
        assert_eq!(
            parse_subject("mister-smith.system.h.status", "h"),
            Some(Dest::System {
                op: "status".into()
            })
        );
        assert_eq!(
            parse_subject("mister-smith.system.all.health", "h"),
            Some(Dest::System {
                op: "health".into()
            })
        );
        assert_eq!(parse_subject("mister-smith.system.other.status", "h"), None);
        assert_eq!(
            parse_subject("mister-smith.claude.coder-1.gossip", "h"),
            None
        );
        assert_eq!(parse_subject("mister-smith.claude.coder-1", "h"), None);
        assert_eq!(
            parse_subject("other.claude.coder-1.task_assignment", "h"),
            None
        );
        assert_eq!(
            parse_subject("mister-smith.claude.coder-1.task_assignment.x", "h"),
            None
        );
    }
}
