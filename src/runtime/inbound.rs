//! What happens to each message that reaches the daemon, on whichever
//! transport: decoded, validated, and routed — tasks to the dispatcher,
//! control requests and reports to the supervisor — and the answers the
//! dispatcher gives on tasks' behalf.
//!
//! This runs on the transports' receiving threads (over NATS, the one
//! thread that takes every task), so it never waits for anyone: a request
//! that needs the supervisor is handed over with its reply subject, and the
//! supervisor answers it itself. Events (progress, results, statuses,
//! alerts, ours or another daemon's) are not requests and are ignored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::json;
use uuid::Uuid;

use crate::message::dispatcher::{Cancel, DispatchCmd, DispatchSink, Refusal, Target, Task};
use crate::message::envelope::{check_trace_id, Envelope, MessageType, Payload};
use crate::message::error::MessageError;
use crate::message::failures::{ErrorKind, HoldReason};
use crate::message::router::{
    agent_subject, alert, answer_to, parse_subject, AgentIx, Dest, Origin, RoutingTable,
};
use crate::message::schemas::{
    check_subject, AgentCommand, AgentRegistration, AlertCode, CommandType, RawJson, Severity,
    TaskAssignment, TaskCount, TaskProgress, TaskResult, TaskStatus,
};
use crate::runtime::accounts::HoldBoard;
use crate::runtime::durable;
use crate::runtime::events::{Command, Event, ReportKind};
use crate::transport::hub::Outbox;
use crate::transport::jetstream::JsCmd;

/// What a refusal reads of an envelope it cannot decode: its trace and
/// correlation ids, copied into the answer like any answer's.
#[derive(serde::Deserialize)]
struct Traced {
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<uuid::Uuid>,
    #[serde(default)]
    message_id: Option<uuid::Uuid>,
}

/// Handles every message that reaches the daemon.
#[derive(Clone)]
pub(crate) struct Inbound {
    pub table: Arc<RoutingTable>,
    pub dispatch: Sender<DispatchCmd>,
    pub events: Sender<Event>,
    pub outbox: Outbox,
    pub max_size: usize,
    pub default_timeout: Duration,
    /// Retries of a task that does not say.
    pub retry_attempts: u32,
    /// Durable mode, on NATS: tasks for one agent or `any` come from the
    /// stream, and the copy core NATS delivers too is not run.
    pub tasks_from_stream: bool,
    /// The config file a `reload` reads again.
    pub config_path: std::path::PathBuf,
}

impl Inbound {
    pub(crate) fn handle(&self, subject: &str, reply: Option<&str>, data: &[u8]) {
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
        if !matches!(dest, Dest::System { .. })
            && matches!(
                dest.message_type(),
                MessageType::TaskProgress | MessageType::TaskResult | MessageType::SystemAlert
            )
        {
            return;
        }
        let env = match Envelope::decode(data, self.max_size) {
            Ok(e) => e,
            Err(e) => {
                // What can still be read of it: its trace id, so that the
                // refusal can be followed like any answer.
                let read = (data.len() <= self.max_size)
                    .then(|| serde_json::from_slice::<Traced>(data).ok())
                    .flatten();
                let origin = Origin {
                    trace_id: read
                        .as_ref()
                        .and_then(|t| t.trace_id.clone())
                        .filter(|t| check_trace_id(t).is_ok()),
                    correlation_id: read
                        .as_ref()
                        .and_then(|t| t.correlation_id.or(t.message_id)),
                    ..Origin::default()
                };
                log::warn!("refused a message on {subject}{}: {e}", origin.trace());
                if let Some(r) = reply {
                    let mut refusal = alert(
                        Severity::Error,
                        AlertCode::BadRequest,
                        e.to_string(),
                        None,
                        None,
                    );
                    refusal.trace_id.clone_from(&origin.trace_id);
                    refusal.correlation_id = origin.correlation_id;
                    self.outbox.reply(r, &refusal);
                }
                return;
            }
        };
        let origin = Origin::of(&env, reply);
        let result = match (&dest, &env.payload) {
            (Dest::System { op }, _) => self.system(op, &env, &origin),
            (_, Payload::TaskAssignment(_)) | (_, Payload::AgentCommand(_))
                if env.message_type() != dest.message_type() =>
            {
                Err(MessageError::field(
                    "message_type",
                    format!(
                        "{} does not match the subject {subject}",
                        env.message_type()
                    ),
                ))
            }
            (Dest::Agent { .. } | Dest::Any { .. }, Payload::TaskAssignment(_))
                if self.tasks_from_stream =>
            {
                Ok(())
            }
            (_, Payload::TaskAssignment(t)) => self.task(&dest, &env, t, &origin),
            (Dest::Agent { id, .. }, Payload::AgentCommand(c)) => {
                self.control(id, c.command_type, c, &env, &origin)
            }
            (Dest::Agent { id, .. }, Payload::AgentStatus(_)) => {
                self.report(Some(id), ReportKind::AgentStatus, origin.clone())
            }
            (Dest::Agent { id, .. }, Payload::SystemHealthCheck(_)) => {
                self.report(Some(id), ReportKind::Health, origin.clone())
            }
            (Dest::Agent { id, .. }, Payload::AgentRegistration(r)) => {
                self.registration(id, r);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            let code = match e {
                MessageError::NoRoute { .. } => AlertCode::NoRoute,
                _ => AlertCode::BadRequest,
            };
            log::warn!("refused a message on {subject}{}: {e}", origin.trace());
            if let Some(r) = &origin.reply_to {
                let task_id = match &env.payload {
                    Payload::TaskAssignment(t) => Some(t.task_id.as_str()),
                    _ => None,
                };
                let refusal = alert(Severity::Error, code, e.to_string(), None, task_id);
                self.outbox.reply(r, &answer_to(refusal, &origin));
            }
        }
    }

    /// Another daemon announced an agent: if it has the id of one of ours,
    /// the supervisor reports the clash.
    fn registration(&self, id: &str, r: &AgentRegistration) {
        if r.daemon_id == self.table.daemon_id || r.agent_id != id {
            return;
        }
        if let Some(agent) = self.table.find(id) {
            let cmd = Command::PeerClaims {
                agent,
                daemon: r.daemon_id.clone(),
            };
            let _ = self.events.send(Event::Command(cmd));
        }
    }

    fn find(&self, id: &str) -> Result<AgentIx, MessageError> {
        self.table
            .find(id)
            .ok_or_else(|| MessageError::NoRoute { target: id.into() })
    }

    fn task(
        &self,
        dest: &Dest,
        env: &Envelope,
        t: &TaskAssignment,
        origin: &Origin,
    ) -> Result<(), MessageError> {
        let no_type = |agent_type: &str| MessageError::NoRoute {
            target: format!("of type {agent_type}"),
        };
        let targets: Vec<Target> = match dest {
            Dest::Agent { id, .. } => {
                let i = self.find(id)?;
                if !self.table.route(i).protocol.takes_tasks() {
                    return Err(MessageError::field(
                        "target_agent_id",
                        format!("agent {id} is a plain process (protocol none) and takes no tasks"),
                    ));
                }
                vec![Target::Agent(i)]
            }
            Dest::Any { agent_type, .. } => {
                self.table
                    .of_type(agent_type)
                    .ok_or_else(|| no_type(agent_type))?;
                vec![Target::Type(agent_type.clone())]
            }
            Dest::All { .. } if t.session_id.is_some() => {
                return Err(MessageError::field(
                    "payload.session_id",
                    "a session is continued by one agent: send it to one, or to any, not to all",
                ))
            }
            Dest::All { agent_type, .. } => self
                .table
                .of_type(agent_type)
                .ok_or_else(|| no_type(agent_type))?
                .iter()
                .map(|&i| Target::Agent(i))
                .collect(),
            Dest::System { .. } => return Ok(()),
        };
        let timeout = env
            .timeout_ms
            .map_or(self.default_timeout, Duration::from_millis);
        let now = Instant::now();
        let tasks = targets
            .into_iter()
            .map(|target| Task {
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
                attempts: 0,
                retries: t.retries.unwrap_or(self.retry_attempts),
                receipt: None,
                // claude names its sessions in lower case.
                session: t.session_id.as_deref().map(str::to_ascii_lowercase),
            })
            .collect();
        let _ = self.dispatch.send(DispatchCmd::Submit(tasks));
        Ok(())
    }

    fn control(
        &self,
        id: &str,
        op: CommandType,
        c: &AgentCommand,
        env: &Envelope,
        origin: &Origin,
    ) -> Result<(), MessageError> {
        if op == CommandType::Shutdown {
            let _ = self.events.send(Event::Command(Command::Shutdown));
            if let Some(r) = &origin.reply_to {
                let e = alert(
                    Severity::Info,
                    AlertCode::ShuttingDown,
                    format!("daemon {} is shutting down", self.table.daemon_id),
                    None,
                    None,
                );
                self.outbox.reply(r, &answer_to(e, origin));
            }
            return Ok(());
        }
        let agent = self.find(id)?;
        if op == CommandType::Execute {
            let prompt = c
                .prompt
                .clone()
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| MessageError::field("payload.prompt", "execute needs a prompt"))?;
            let t = TaskAssignment {
                task_id: c
                    .task_id
                    .clone()
                    .unwrap_or_else(|| Uuid::new_v4().to_string()),
                prompt,
                context: None,
                retries: None,
                session_id: None,
            };
            let dest = Dest::Agent {
                id: id.into(),
                message_type: MessageType::TaskAssignment,
            };
            return self.task(&dest, env, &t, origin);
        }
        let cmd = Command::Control {
            agent,
            op,
            origin: origin.clone(),
        };
        let _ = self.events.send(Event::Command(cmd));
        Ok(())
    }

    /// Asks the supervisor for a report on `agent` (or every agent), which
    /// it sends to the origin's reply subject. Without one there is nobody
    /// to answer.
    fn report(
        &self,
        agent: Option<&str>,
        kind: ReportKind,
        origin: Origin,
    ) -> Result<(), MessageError> {
        if origin.reply_to.is_none() {
            return Ok(());
        }
        let agent = agent.map(|id| self.find(id)).transpose()?;
        let cmd = Command::Report {
            agent,
            kind,
            origin,
        };
        let _ = self.events.send(Event::Command(cmd));
        Ok(())
    }

    fn system(&self, op: &str, env: &Envelope, origin: &Origin) -> Result<(), MessageError> {
        match (op, &env.payload) {
            ("status" | "health", Payload::SystemHealthCheck(h)) => {
                self.report(h.agent_id.as_deref(), ReportKind::Health, origin.clone())
            }
            ("status" | "health", _) => self.report(None, ReportKind::Health, origin.clone()),
            ("reload", _) => {
                crate::runtime::reload::load_later(
                    self.config_path.clone(),
                    self.events.clone(),
                    Some(origin.clone()),
                );
                Ok(())
            }
            ("agent_command", Payload::AgentCommand(c)) if c.account.is_some() => {
                let (Some(account), CommandType::Resume) = (&c.account, c.command_type) else {
                    return Err(MessageError::field(
                        "payload.account",
                        "only resume takes an account",
                    ));
                };
                let cmd = Command::ResumeAccount {
                    account: account.clone(),
                    origin: origin.clone(),
                };
                let _ = self.events.send(Event::Command(cmd));
                Ok(())
            }
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

/// Answers tasks on behalf of the dispatcher (acceptance, refusal, expiry,
/// cancellation) and hands its assignments to the supervisor.
pub(crate) struct DaemonSink {
    pub table: Arc<RoutingTable>,
    pub events: Sender<Event>,
    pub outbox: Outbox,
    /// Which agents' accounts are held, and why.
    pub holds: Arc<HoldBoard>,
    /// Durable mode: the pump, which stores results of tasks from the
    /// stream and takes back the ones given up.
    pub pump: Option<Sender<JsCmd>>,
    /// Where an unrun task's result ends its transcript.
    pub transcripts: Option<crate::runtime::transcripts::Transcripts>,
    /// How many tasks were answered before they ran.
    pub unrun: Unrun,
}

/// Tasks answered before they ran, by status and kind: the dispatcher's
/// sink counts, reports read.
#[derive(Clone, Default)]
pub(crate) struct Unrun(Arc<std::sync::Mutex<Vec<TaskCount>>>);

impl Unrun {
    fn count(&self, status: TaskStatus, kind: ErrorKind) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match c
            .iter_mut()
            .find(|c| c.status == status && c.error_kind == Some(kind))
        {
            Some(c) => c.count += 1,
            None => c.push(TaskCount {
                status,
                error_kind: Some(kind),
                count: 1,
            }),
        }
    }

    pub(crate) fn counts(&self) -> Vec<TaskCount> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl DaemonSink {
    fn agent_id(&self, t: &Task) -> String {
        match &t.target {
            Target::Agent(i) => self.table.id(*i),
            Target::Type(_) => "any".into(),
        }
    }

    fn subject(&self, t: &Task, mt: MessageType) -> String {
        match &t.target {
            Target::Agent(i) => self.table.subject(*i, mt),
            Target::Type(ty) => agent_subject(ty, "any", mt),
        }
    }

    /// "agent coder-1 is terminated (stopped by an operator)", or for a task
    /// to any agent of a type, the dispatcher's words for the type.
    fn down_text(&self, t: &Task, why: &str) -> String {
        match &t.target {
            Target::Agent(i) => format!("agent {} is terminated ({why})", self.table.id(*i)),
            Target::Type(_) => why.to_string(),
        }
    }

    /// The hold that kept `t` from running: its agent's, or for a task to
    /// any agent of a type, the one every agent of the type is under.
    fn hold(&self, t: &Task) -> Option<HoldReason> {
        match &t.target {
            Target::Agent(i) => self.holds.get(*i),
            Target::Type(ty) => {
                let reasons: Option<Vec<HoldReason>> = self
                    .table
                    .of_type(ty)?
                    .iter()
                    .map(|&i| self.holds.get(i))
                    .collect();
                let reasons = reasons?;
                reasons
                    .iter()
                    .copied()
                    .find(|r| *r == HoldReason::Auth)
                    .or_else(|| reasons.first().copied())
            }
        }
    }

    /// Gives a task from the stream back to it; false for any other task.
    fn release(&self, t: &Task) -> bool {
        match (&self.pump, &t.receipt) {
            (Some(pump), Some(r)) => {
                let _ = pump.send(durable::release(r));
                true
            }
            _ => false,
        }
    }

    fn finish(&self, t: &Task, status: TaskStatus, kind: ErrorKind, why: String) {
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
            error_kind: Some(kind),
            attempts: t.attempts,
        };
        log::info!(
            "task {} {} ({kind}) before it ran: {}",
            t.shown(),
            match status {
                TaskStatus::Timeout => "timed out",
                s => s.as_str(),
            },
            result
                .errors
                .as_deref()
                .and_then(<[String]>::first)
                .map_or("", String::as_str)
        );
        self.unrun.count(status, kind);
        let env = answer_to(Envelope::new(Payload::TaskResult(result)), &t.origin);
        let data = Arc::new(env.encode());
        if let Some(tr) = &self.transcripts {
            let agent = match &t.target {
                Target::Agent(i) => Some(self.table.id(*i)),
                Target::Type(_) => None,
            };
            tr.finish_unrun(agent.as_deref(), t, data.clone());
        }
        if let (Some(pump), Some(r)) = (&self.pump, &t.receipt) {
            let live = durable::live_subjects(&self.table, t, MessageType::TaskResult);
            let _ = pump.send(JsCmd::Finish(durable::finish(r, &t.task_id, data, live)));
            return;
        }
        self.outbox.publish_shared(
            &self.subject(t, MessageType::TaskResult),
            t.origin.reply_to.as_deref(),
            data,
        );
    }
}

impl DispatchSink for DaemonSink {
    fn assign(&self, agent: AgentIx, task: Task) {
        let _ = self.events.send(Event::Assign(agent, Box::new(task)));
    }

    fn accepted(&self, t: &Task, position: usize) {
        if position > 0 {
            log::debug!(
                "task {} queued for {} (position {position})",
                t.task_id,
                self.agent_id(t)
            );
        }
        if let Some(r) = &t.origin.reply_to {
            let progress = TaskProgress {
                task_id: t.task_id.clone(),
                agent_id: self.agent_id(t),
                event: RawJson::from_value(&json!({
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
        // A task from the stream waits there for a daemon that can take it.
        if self.release(t) {
            log::debug!("task {} given back to the stream: {why:?}", t.shown());
            return;
        }
        let (code, message) = match why {
            Refusal::Full { capacity } => (
                AlertCode::QueueFull,
                format!("the queue is full ({capacity} tasks); retry later"),
            ),
            Refusal::ShuttingDown => (
                AlertCode::ShuttingDown,
                "the daemon is shutting down; retry later".to_string(),
            ),
            Refusal::AgentDown { why } => (AlertCode::AgentDown, self.down_text(t, &why)),
            Refusal::Duplicate { same_sender: true } => {
                // A retry or a replay: the first answers are on their way
                // to this same sender.
                log::debug!("task {}: the same request again; not run twice", t.task_id);
                return;
            }
            Refusal::Duplicate { same_sender: false } => (
                AlertCode::Duplicate,
                format!(
                    "message {} (task {}) was already accepted: it is not run twice, and its answers go to its first sender",
                    t.origin.message_id.map(|m| m.to_string()).unwrap_or_default(),
                    t.task_id
                ),
            ),
        };
        log::warn!("task {} refused: {message}", t.shown());
        if let Some(r) = &t.origin.reply_to {
            let id = self.agent_id(t);
            let refusal = alert(Severity::Error, code, message, Some(&id), Some(&t.task_id));
            self.outbox.reply(r, &answer_to(refusal, &t.origin));
        }
    }

    fn expired(&self, t: &Task) {
        // A task that waited behind a hold says which: a script told `auth`
        // knows a login is needed, not a retry.
        let (kind, why) = match self.hold(t) {
            Some(r) => (
                r.kind(),
                format!(
                    "timed out after {} ms waiting in the queue: the account is held ({r})",
                    t.timeout.as_millis()
                ),
            ),
            None => (
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms waiting in the queue",
                    t.timeout.as_millis()
                ),
            ),
        };
        self.finish(t, TaskStatus::Timeout, kind, why);
    }

    fn cancelled(&self, t: &Task, why: Cancel) {
        // A task from the stream is not lost with this daemon or its
        // agent: another daemon (or this one, later) runs it.
        if self.release(t) {
            log::info!("task {} given back to the stream: {why:?}", t.shown());
            return;
        }
        let why = match why {
            Cancel::Shutdown => "the daemon shut down before the task started".into(),
            Cancel::AgentDown { why } => {
                format!("{} before the task started", self.down_text(t, &why))
            }
        };
        self.finish(t, TaskStatus::Cancelled, ErrorKind::Cancelled, why);
    }

    fn closed(&self) {
        let _ = self.events.send(Event::DispatcherClosed);
    }
}
