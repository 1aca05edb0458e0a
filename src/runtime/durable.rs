//! Durable mode, the runtime's side: which consumers this daemon reads,
//! what a task delivered from the stream becomes (a queued task like any
//! other, with a receipt), and how a task with a receipt is answered (its
//! result goes to the pump to be stored before it is published) or given
//! back (the daemon is stopping, or its agent is down).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::JetStreamConfig;
use crate::message::demand::Consumers;
use crate::message::dispatcher::{DispatchCmd, Receipt, Target, Task};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::failures::ErrorKind;
use crate::message::router::{agent_subject, alert, answer_to, Origin, RoutingTable};
use crate::message::schemas::{AlertCode, Severity, TaskResult, TaskStatus};
use crate::transport::hub::Outbox;
use crate::transport::jetstream::{ConsumerSpec, Delivery, Finish, JsCmd, Verdict};

/// The consumers of this daemon's table: one per agent that takes tasks,
/// one per type; with the target each feeds.
pub(crate) fn consumers(table: &RoutingTable) -> (Vec<ConsumerSpec>, Consumers, Vec<Target>) {
    let mut specs = Vec::new();
    let mut targets = Vec::new();
    let mut c = Consumers {
        agent: vec![None; table.len()],
        ..Consumers::default()
    };
    let mut types: Vec<String> = Vec::new();
    for i in 0..table.len() {
        let r = table.route(crate::message::router::AgentIx(i));
        if !r.protocol.takes_tasks() {
            continue;
        }
        c.agent[i] = Some(specs.len());
        specs.push(ConsumerSpec::agent(&r.id));
        targets.push(Target::Agent(crate::message::router::AgentIx(i)));
        if !types.contains(&r.agent_type) {
            types.push(r.agent_type.clone());
        }
    }
    for t in types {
        c.types.push((t.clone(), specs.len()));
        specs.push(ConsumerSpec::any(&t));
        targets.push(Target::Type(t));
    }
    c.count = specs.len();
    (specs, c, targets)
}

/// Where a task's answers go: its target's subject and its sender.
pub(crate) fn live_subjects(table: &RoutingTable, t: &Task, mt: MessageType) -> Vec<String> {
    let mut live = vec![match &t.target {
        Target::Agent(i) => table.subject(*i, mt),
        Target::Type(ty) => agent_subject(ty, "any", mt),
    }];
    if let Some(r) = &t.origin.reply_to {
        live.push(r.clone());
    }
    live
}

/// The result `data` of a task from the stream, for the pump to store and
/// publish on `live`.
pub(crate) fn finish(
    receipt: &Receipt,
    task_id: &str,
    data: Arc<Vec<u8>>,
    live: Vec<String>,
) -> Box<Finish> {
    Box::new(Finish {
        ack: receipt.ack.clone(),
        stream_seq: receipt.seq,
        task_id: task_id.to_string(),
        data,
        live,
        term: false,
    })
}

/// Gives a task back to the stream, to be offered again after
/// a delay (see the pump).
pub(crate) fn release(receipt: &Receipt) -> JsCmd {
    JsCmd::Release { seq: receipt.seq }
}

/// Turns deliveries into tasks for the dispatcher.
pub(crate) struct Glue {
    pub table: Arc<RoutingTable>,
    pub config: JetStreamConfig,
    pub targets: Vec<Target>,
    pub dispatch: Sender<DispatchCmd>,
    pub outbox: Outbox,
    pub max_size: usize,
    pub default_timeout: Duration,
    pub retry_attempts: u32,
}

impl Glue {
    pub(crate) fn deliver(&self, d: Delivery) -> Verdict {
        let env = match Envelope::decode(&d.data, self.max_size) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "JetStream: dropped a message on {} (stream seq {}): {e}",
                    d.subject,
                    d.stream_seq
                );
                return Verdict::Refuse;
            }
        };
        let Payload::TaskAssignment(t) = &env.payload else {
            log::warn!(
                "JetStream: dropped a {} on {} (stream seq {}): not a task",
                env.message_type(),
                d.subject,
                d.stream_seq
            );
            return Verdict::Refuse;
        };
        let Some(target) = self.targets.get(d.consumer).cloned() else {
            return Verdict::Refuse;
        };
        let now_ms = wall_ms();
        let timeout = env
            .timeout_ms
            .map_or(self.default_timeout, Duration::from_millis);
        let waited = Duration::from_millis(now_ms.saturating_sub(d.published_ms));
        let now = Instant::now();
        let task = Task {
            task_id: t.task_id.clone(),
            prompt: t.prompt.clone(),
            context: t.context.clone(),
            priority: env.priority,
            timeout,
            deadline: now + timeout.saturating_sub(waited),
            target,
            origin: Origin::of(&env, None),
            submitted: now.checked_sub(waited).unwrap_or(now),
            seq: 0,
            attempts: d.delivered.saturating_sub(1),
            retries: t.retries.unwrap_or(self.retry_attempts),
            session: t.session_id.as_deref().map(str::to_ascii_lowercase),
            receipt: Some(Box::new(Receipt {
                ack: d.ack.clone(),
                seq: d.stream_seq,
                delivered: d.delivered,
                consumer: d.consumer,
            })),
        };
        if d.delivered > self.config.max_deliver {
            let why = format!(
                "delivered {} times without an answer (transport.jetstream.max_deliver is {}): each daemon that took it stopped before it finished",
                d.delivered - 1,
                self.config.max_deliver
            );
            log::error!("task {}: {why}; not run again", task.shown());
            let agent = self.agent_id(&task);
            let a = alert(
                Severity::Error,
                AlertCode::Undeliverable,
                format!("task {}: {why}", task.task_id),
                Some(&agent),
                Some(&task.task_id),
            );
            let subject = live_subjects(&self.table, &task, MessageType::SystemAlert);
            self.outbox.publish(&subject[0], &a);
            return self.answer(
                &task,
                TaskStatus::Failed,
                ErrorKind::Undeliverable,
                why,
                true,
            );
        }
        if waited >= timeout {
            let why = format!(
                "timed out after {} ms waiting in the stream",
                timeout.as_millis()
            );
            return self.answer(&task, TaskStatus::Timeout, ErrorKind::Timeout, why, false);
        }
        let _ = self.dispatch.send(DispatchCmd::Submit(vec![task]));
        Verdict::Taken
    }

    fn agent_id(&self, t: &Task) -> String {
        match &t.target {
            Target::Agent(i) => self.table.id(*i),
            Target::Type(_) => "any".into(),
        }
    }

    /// A task answered without running.
    fn answer(
        &self,
        t: &Task,
        status: TaskStatus,
        kind: ErrorKind,
        why: String,
        term: bool,
    ) -> Verdict {
        let result = TaskResult {
            task_id: t.task_id.clone(),
            agent_id: self.agent_id(t),
            status,
            result: None,
            errors: Some(vec![why]),
            duration_ms: 0,
            num_turns: None,
            total_cost_usd: None,
            usage: None,
            session_id: None,
            error_kind: Some(kind),
            attempts: t.attempts,
        };
        let env = answer_to(Envelope::new(Payload::TaskResult(result)), &t.origin);
        let live = live_subjects(&self.table, t, MessageType::TaskResult);
        let Some(receipt) = &t.receipt else {
            return Verdict::Refuse;
        };
        let mut f = finish(receipt, &t.task_id, Arc::new(env.encode()), live);
        f.term = term;
        Verdict::Answer(f)
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
