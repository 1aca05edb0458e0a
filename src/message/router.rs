//! The router: subjects, the table of this daemon's agents, and the
//! fields an answer copies from its request.
//!
//! ```text
//! mister-smith.{agent_type}.{agent_id}.{message_type}   one agent
//! mister-smith.{agent_type}.any.{message_type}          one agent of the type (queue group)
//! mister-smith.{agent_type}.all.{message_type}          every agent of the type
//! mister-smith.system.{daemon_id|all}.{op}              a daemon's control plane
//! ```
//!
//! What happens to a message that arrives is the runtime's business
//! (`runtime::inbound`); this module only says where a subject points.

use std::collections::HashMap;
use std::fmt;

use uuid::Uuid;

use crate::config::names::check_token;
use crate::config::{Config, Protocol};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::schemas::{AlertCode, Severity, SystemAlert};

pub const PREFIX: &str = "mister-smith";

/// The subject of message type `t` for agent `id` of type `agent_type`.
pub fn agent_subject(agent_type: &str, id: &str, t: MessageType) -> String {
    format!("{PREFIX}.{agent_type}.{id}.{t}")
}

/// The subject a task's stored result is kept on (durable mode): one
/// message per task id. An id of letters, digits, `-` and `_` (a UUID) is
/// the last token as it is; any other id is written `~` and its bytes in
/// hex, so that no id can reach outside the results subjects.
pub fn results_subject(task_id: &str) -> String {
    format!("{PREFIX}.results.{}", id_token(task_id))
}

/// A task id as one subject token or file name: as it is when it is made
/// of letters, digits, `-` and `_` (a UUID), else `~` and its bytes in hex.
pub fn id_token(task_id: &str) -> String {
    if !task_id.is_empty()
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return task_id.to_string();
    }
    let mut s = String::from("~");
    for b in task_id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Every task's subject that a stream of tasks captures: to one agent, to
/// `any` of a type, and (swept away, since those stay on core NATS) to
/// `all`.
pub fn tasks_capture() -> String {
    format!("{PREFIX}.*.*.{}", MessageType::TaskAssignment)
}

/// Every stored result's subject.
pub fn results_capture() -> String {
    format!("{PREFIX}.results.*")
}

/// The NATS queue group of everything addressed to agent `id`.
pub fn agent_group(id: &str) -> String {
    format!("{PREFIX}.agent.{id}")
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

impl Dest {
    /// The message type the subject names (`system_health_check` for the
    /// control plane, whose ops are not message types).
    pub fn message_type(&self) -> MessageType {
        match self {
            Dest::Agent { message_type, .. }
            | Dest::Any { message_type, .. }
            | Dest::All { message_type, .. } => *message_type,
            Dest::System { .. } => MessageType::SystemHealthCheck,
        }
    }
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

/// An agent's place in this daemon's table: its index in the config's
/// agents after replicas are expanded, then in the order reloads added
/// agents. Cheap to copy and to hash, and valid for the daemon's whole life:
/// the table only grows, and a removed agent keeps its place (retired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentIx(pub usize);

impl fmt::Display for AgentIx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One agent, as far as routing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: String,
    pub agent_type: String,
    pub protocol: Protocol,
}

impl Route {
    pub fn of(spec: &crate::config::AgentSpec) -> Route {
        Route {
            id: spec.id.clone(),
            agent_type: spec.agent_type.clone(),
            protocol: spec.protocol,
        }
    }
}

/// A subscription a daemon makes: a subject pattern, and the queue group
/// that shares it with other daemons, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub subject: String,
    pub queue: Option<String>,
}

/// This daemon's agents by id and by type. A reload adds agents at the
/// end and retires removed ones in place; readers (the transports'
/// threads, the dispatcher's sink) see each change whole.
#[derive(Debug)]
pub struct RoutingTable {
    pub daemon_id: String,
    /// This daemon process, among any that share its `daemon_id` by
    /// mistake (one config copied to two hosts): a new id each start.
    pub instance: String,
    slots: std::sync::RwLock<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    agents: Vec<Route>,
    /// Removed by a reload: no longer found by id or type.
    retired: Vec<bool>,
    by_id: HashMap<String, AgentIx>,
    by_type: HashMap<String, Vec<AgentIx>>,
}

impl Slots {
    fn index(&mut self) {
        self.by_id.clear();
        self.by_type.clear();
        for (i, a) in self.agents.iter().enumerate() {
            if self.retired[i] {
                continue;
            }
            self.by_id.insert(a.id.clone(), AgentIx(i));
            if a.protocol.takes_tasks() {
                self.by_type
                    .entry(a.agent_type.clone())
                    .or_default()
                    .push(AgentIx(i));
            }
        }
    }
}

impl RoutingTable {
    pub fn new(config: &Config) -> RoutingTable {
        let agents: Vec<Route> = config.agents.iter().map(Route::of).collect();
        let mut slots = Slots {
            retired: vec![false; agents.len()],
            agents,
            ..Slots::default()
        };
        slots.index();
        RoutingTable {
            daemon_id: config.daemon_id.clone(),
            instance: uuid::Uuid::new_v4().to_string(),
            slots: std::sync::RwLock::new(slots),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Slots> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Slots> {
        self.slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live agent with this id.
    pub fn find(&self, id: &str) -> Option<AgentIx> {
        self.read().by_id.get(id).copied()
    }

    /// The agent at `i` (live or retired). Every `AgentIx` comes from this
    /// table.
    pub fn route(&self, i: AgentIx) -> Route {
        self.read().agents[i.0].clone()
    }

    /// Agent `i`'s id.
    pub fn id(&self, i: AgentIx) -> String {
        self.read().agents[i.0].id.clone()
    }

    /// Every slot, retired ones included.
    pub fn len(&self) -> usize {
        self.read().agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().agents.is_empty()
    }

    /// Every agent's type, by index (what the dispatcher needs).
    pub fn types(&self) -> Vec<String> {
        self.read()
            .agents
            .iter()
            .map(|a| a.agent_type.clone())
            .collect()
    }

    /// The live agents of `agent_type` that take tasks, or `None` when
    /// there are none.
    pub fn of_type(&self, agent_type: &str) -> Option<Vec<AgentIx>> {
        self.read().by_type.get(agent_type).cloned()
    }

    pub fn subject(&self, i: AgentIx, t: MessageType) -> String {
        let slots = self.read();
        let a = &slots.agents[i.0];
        agent_subject(&a.agent_type, &a.id, t)
    }

    /// Adds agents at the end; their places, in order.
    pub fn grow(&self, routes: Vec<Route>) -> Vec<AgentIx> {
        let mut slots = self.write();
        let first = slots.agents.len();
        let n = routes.len();
        slots.agents.extend(routes);
        slots.retired.resize(first + n, false);
        slots.index();
        (first..first + n).map(AgentIx).collect()
    }

    /// Agent `i` is no longer found by id or type (it keeps its place).
    pub fn retire(&self, i: AgentIx) {
        let mut slots = self.write();
        if let Some(r) = slots.retired.get_mut(i.0) {
            *r = true;
        }
        slots.index();
    }

    /// The NATS subscriptions that reach this daemon's agents and control
    /// plane. `any` is a queue group, so one daemon of several takes each
    /// task.
    pub fn daemon_subs(&self, durable: bool) -> Vec<Sub> {
        let slots = self.read();
        let sub = |subject: String, queue: Option<String>| Sub { subject, queue };
        // Each agent id in a queue group of its own: should the same id run
        // on two daemons (one config deployed twice), a task to it still
        // reaches only one of them.
        let mut ids: Vec<&String> = slots.by_id.keys().collect();
        ids.sort();
        let mut subs: Vec<Sub> = ids
            .into_iter()
            .map(|id| sub(format!("{PREFIX}.*.{id}.*"), Some(agent_group(id))))
            .collect();
        // Only types with agents that take tasks: a daemon must not take
        // its share of `any` tasks it can only refuse.
        let mut types: Vec<&String> = slots.by_type.keys().collect();
        types.sort();
        for t in types {
            // Durable: `any` tasks come from the stream, not from core NATS.
            if !durable {
                subs.push(sub(
                    format!("{PREFIX}.{t}.any.{}", MessageType::TaskAssignment),
                    Some(format!("{PREFIX}.{t}")),
                ));
            }
            subs.push(sub(format!("{PREFIX}.{t}.all.*"), None));
        }
        // Every daemon hears every announcement (they are rare: one per
        // agent start, and every 30 s per agent id that clashes): the
        // queue group above hands each message to only one of the daemons
        // that share an id, and a clash must reach them all.
        subs.push(sub(
            format!("{PREFIX}.*.*.{}", MessageType::AgentRegistration),
            None,
        ));
        subs.push(sub(system_subject(&self.daemon_id, "*"), None));
        subs.push(sub(system_subject("all", "*"), None));
        subs
    }
}

/// A request's trace id in a log line: ` [trace ID]` (see
/// [`Origin::trace`]).
pub struct TraceTag<'a>(Option<&'a str>);

impl std::fmt::Display for TraceTag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(t) => write!(f, " [trace {t}]"),
            None => Ok(()),
        }
    }
}

/// A task as a log line names it: the id as it is when it is plain, else
/// quoted and escaped (no task id can write the rest of the line), then
/// its trace.
pub struct Shown<'a>(pub &'a str, pub TraceTag<'a>);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+=#".contains(c));
        if plain {
            write!(f, "{}{}", self.0, self.1)
        } else {
            write!(f, "{:?}{}", self.0, self.1)
        }
    }
}

/// What the sender of a request needs in every answer to it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    /// The subject replies go to, if the sender asked for them.
    pub reply_to: Option<String>,
    /// Copied into every answer: the request's `correlation_id`, or else its
    /// `message_id`.
    pub correlation_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub source_agent_id: Option<String>,
    /// The request's own `message_id`: the same envelope twice (a retrying
    /// client, a replayed message) is one request.
    pub message_id: Option<Uuid>,
}

impl Origin {
    /// ` [trace ID]`, for log lines about the request.
    pub fn trace(&self) -> TraceTag<'_> {
        TraceTag(self.trace_id.as_deref())
    }

    /// The origin of request `env`, which came with reply subject `reply`.
    pub fn of(env: &Envelope, reply: Option<&str>) -> Origin {
        Origin {
            reply_to: env.reply_to.clone().or_else(|| reply.map(String::from)),
            correlation_id: Some(env.correlation_id.unwrap_or(env.message_id)),
            // Every task is traced: one sent without a trace id is traced
            // by its message id (the same on every redelivery).
            trace_id: env
                .trace_id
                .clone()
                .or_else(|| Some(env.message_id.simple().to_string())),
            source_agent_id: env.source_agent_id.clone(),
            message_id: Some(env.message_id),
        }
    }
}

/// A `system_alert` envelope.
pub fn alert(
    severity: Severity,
    code: AlertCode,
    message: String,
    agent_id: Option<&str>,
    task_id: Option<&str>,
) -> Envelope {
    Envelope::new(Payload::SystemAlert(SystemAlert {
        severity,
        code,
        message,
        agent_id: agent_id.map(String::from),
        task_id: task_id.map(String::from),
        stderr: None,
        account: None,
        reason: None,
        until: None,
    }))
}

/// Copies the correlation fields of a request into its answer.
pub fn answer_to(mut env: Envelope, origin: &Origin) -> Envelope {
    env.correlation_id = origin.correlation_id;
    env.trace_id.clone_from(&origin.trace_id);
    env.target_agent_id.clone_from(&origin.source_agent_id);
    env
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
