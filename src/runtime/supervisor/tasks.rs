//! Tasks on agents: starting one, passing its progress on, its deadline and
//! the output watchdog, and answering it with its result (or with what we
//! know when it got none).

use std::sync::Arc;
use std::time::Instant;

use super::agent::{Reason, Running};
use super::timers::Timer;
use super::{Supervisor, INTERRUPT_GRACE, LINGER_AFTER_RESULT};
use crate::config::Protocol;
use crate::message::dispatcher::{DispatchCmd, Task};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::failures::ErrorKind;
use crate::message::router::{answer_to, AgentIx};
use crate::message::schemas::{
    AgentState, CommandType, ReasonCode, TaskProgress, TaskResult, TaskStatus,
};
use crate::runtime::claude::{self, Line, TurnResult, TurnSignals};
use crate::runtime::durable;
use crate::runtime::process::SpawnRequest;
use crate::runtime::tracker::TrackCmd;
use crate::transport::jetstream::JsCmd;

/// Room left for the envelope around a progress event.
const ENVELOPE_ROOM: usize = 4096;

/// The status of a `task_result` envelope.
fn env_status(env: &Envelope) -> Option<TaskStatus> {
    match &env.payload {
        Payload::TaskResult(r) => Some(r.status),
        _ => None,
    }
}

/// How a task ended, in a log line.
pub(super) fn status_word(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Timeout => "timed out",
    }
}

impl Supervisor {
    /// Starts `task` on agent `i`, or hands it back to the dispatcher if the
    /// agent is no longer idle.
    pub(super) fn assign(&mut self, i: AgentIx, task: Task) {
        if self.shutdown.is_some() {
            self.answer_unstarted(
                i,
                &task,
                TaskStatus::Cancelled,
                "the daemon is shutting down".into(),
            );
            return;
        }
        // Not idle any more, or its account was held after it was lent:
        // the task keeps its place in the queue.
        if self.agents[i.0].state != AgentState::Idle || !self.links.accounts.start(i) {
            let _ = self
                .links
                .dispatch
                .send(DispatchCmd::Requeue(Box::new(task)));
            return;
        }
        match self.agents[i.0].spec.protocol {
            Protocol::StreamJson => {
                let a = &self.agents[i.0];
                if task.session.is_some() && task.session != a.session.id {
                    // Its process is in another session (or in none yet).
                    self.resume_for(i, task);
                    return;
                }
                self.send_turn(i, task);
                return;
            }
            Protocol::Oneshot => {
                let a = &mut self.agents[i.0];
                a.run += 1;
                a.result_seen = false;
                let run = a.run;
                let req = SpawnRequest {
                    spec: a.spec.clone(),
                    prompt: Some(task.prompt.clone()),
                    trace_id: task.origin.trace_id.clone(),
                    resume: task.session.clone(),
                    max_message_size: self.links.max_message_size,
                };
                let sink = self.child_sink(i, run);
                match self.spawner.spawn(req, sink) {
                    Ok(child) => {
                        let now = self.now();
                        let a = &mut self.agents[i.0];
                        let _ = self.links.tracker.send(TrackCmd::Up {
                            id: a.spec.id.clone(),
                            pgid: child.pid(),
                        });
                        a.child = Some(child);
                        a.child_since = now;
                    }
                    Err(e) => {
                        log::error!("{e}");
                        let why = e.to_string();
                        let a = &mut self.agents[i.0];
                        a.reason = Some(Reason::new(ReasonCode::SpawnFailed, why.clone()));
                        a.count_task(TaskStatus::Failed, Some(ErrorKind::Other));
                        self.answer_with(
                            i,
                            &task,
                            TaskStatus::Failed,
                            ErrorKind::Other,
                            vec![why],
                            task.submitted,
                        );
                        self.set_state(i, AgentState::Error);
                        self.release_probe(i);
                        self.after_exit(i, true, std::time::Duration::ZERO, Vec::new());
                        return;
                    }
                }
            }
            Protocol::None => {
                self.answer_with(
                    i,
                    &task,
                    TaskStatus::Failed,
                    ErrorKind::Other,
                    vec!["this agent takes no tasks".into()],
                    task.submitted,
                );
                self.release_probe(i);
                return;
            }
        }
        self.begin(i, task);
    }

    /// Sends `task` to stream-json agent `i`'s process as its next turn;
    /// one that cannot be written goes back to the queue.
    pub(super) fn send_turn(&mut self, i: AgentIx, task: Task) {
        let sent = self.agents[i.0]
            .child
            .as_ref()
            .is_some_and(|c| c.write_line(claude::user_message(&task.prompt)));
        if !sent {
            self.release_probe(i);
            let _ = self
                .links
                .dispatch
                .send(DispatchCmd::Requeue(Box::new(task)));
            return;
        }
        self.begin(i, task);
    }

    /// `task` is under way on agent `i`: counted, logged, watched.
    fn begin(&mut self, i: AgentIx, mut task: Task) {
        let (seq, deadline) = (task.seq, task.deadline);
        task.attempts += 1;
        let now = self.now();
        let a = &mut self.agents[i.0];
        log::info!(
            "agent {}: task {} started (priority {})",
            a.spec.id,
            task.shown(),
            task.priority
        );
        if let Some(t) = &self.links.transcripts {
            let line = crate::runtime::transcripts::assignment(&task, &a.spec.id);
            t.write(&a.spec.id, &task.task_id, Arc::new(line), false);
        }
        a.last_output = now;
        a.task = Some(Running {
            task,
            started: now,
            timed_out: false,
            turn_started: false,
            signals: TurnSignals::default(),
        });
        self.set_state(i, AgentState::Busy);
        self.arm_watchdog(i);
        self.timers.at(deadline, Timer::Deadline { agent: i, seq });
    }

    pub(super) fn arm_watchdog(&mut self, i: AgentIx) {
        let a = &mut self.agents[i.0];
        a.watchdog += 1;
        let (t, generation) = (a.spec.health.idle_timeout, a.watchdog);
        self.schedule(
            t,
            Timer::Watchdog {
                agent: i,
                generation,
            },
        );
    }

    /// The watchdog of `generation` fired: a busy agent silent for
    /// `idle_timeout_ms` is hung; one that spoke meanwhile is checked again
    /// when that much silence could have passed.
    pub(super) fn check_watchdog(&mut self, i: AgentIx, generation: u64) {
        let now = self.now();
        let a = &self.agents[i.0];
        if a.watchdog != generation || a.child.is_none() || a.state != AgentState::Busy {
            return;
        }
        let silent = now.saturating_duration_since(a.last_output);
        if silent >= a.spec.health.idle_timeout {
            log::error!(
                "agent {}: busy and silent for {} ms: hung",
                a.spec.id,
                silent.as_millis()
            );
            self.fail(i, ReasonCode::Hung);
        } else {
            let left = a.spec.health.idle_timeout - silent;
            self.schedule(
                left,
                Timer::Watchdog {
                    agent: i,
                    generation,
                },
            );
        }
    }

    pub(super) fn running_seq(&self, i: AgentIx) -> Option<u64> {
        self.agents[i.0].task.as_ref().map(|r| r.task.seq)
    }

    /// A running task reached its deadline: interrupt it (stream-json) or
    /// stop its process (one-shot); kill if that does not end it.
    pub(super) fn task_timed_out(&mut self, i: AgentIx) {
        let Some(r) = self.agents[i.0].task.as_mut() else {
            return;
        };
        if r.timed_out {
            return;
        }
        r.timed_out = true;
        let seq = r.task.seq;
        if self.agents[i.0].state == AgentState::Paused {
            // A stopped process can neither answer nor exit: resume it.
            let _ = self.control(i, CommandType::Resume);
        }
        let a = &self.agents[i.0];
        let Some(r) = a.task.as_ref() else { return };
        log::warn!(
            "agent {}: task {} timed out after {} ms: interrupting",
            a.spec.id,
            r.task.shown(),
            r.task.timeout.as_millis()
        );
        match a.spec.protocol {
            Protocol::StreamJson => {
                let req = claude::interrupt_request(&format!("interrupt-{}-{seq}", a.spec.id));
                if let Some(c) = &a.child {
                    c.write_line(req);
                }
            }
            _ => self.send_term(i),
        }
        self.schedule(INTERRUPT_GRACE, Timer::InterruptGrace { agent: i, seq });
    }

    /// A stdout line of agent `i`'s current process.
    pub(super) fn on_line(&mut self, i: AgentIx, line: Line) {
        let now = self.now();
        let a = &mut self.agents[i.0];
        a.last_output = now;
        match line {
            Line::ControlResponse { request_id, error } => {
                if a.init_request.as_deref() != Some(request_id.as_str()) {
                    log::debug!("agent {}: control response {request_id}", a.spec.id);
                    return;
                }
                a.init_request = None;
                match error {
                    // Being stopped (or paused) while it started: ready
                    // for nothing, and no transition to refuse.
                    None if a.state != AgentState::Initializing => {
                        log::debug!("agent {}: ready, but {}", a.spec.id, a.state);
                    }
                    None => {
                        if self.set_state(i, AgentState::Idle) {
                            self.watch_health(i);
                        }
                    }
                    Some(e) => {
                        log::error!("agent {}: initialize refused: {e}", a.spec.id);
                        a.reason = Some(Reason::new(
                            ReasonCode::InitializeRefused,
                            format!("initialize refused: {e}"),
                        ));
                        self.fail(i, ReasonCode::InitializeRefused);
                    }
                }
            }
            Line::Result(turn) => self.on_result(i, turn),
            Line::Event(ev, signal) => {
                // The reader cut events to max_message_size; a NATS server
                // may take less.
                let limit = self.wire_limit().saturating_sub(ENVELOPE_ROOM);
                let a = &mut self.agents[i.0];
                if let Some(claude::Signal::Session(id)) = &signal {
                    // A one-shot process is in its session (a resume's
                    // fork) until it exits, too.
                    if a.session.id.is_none() {
                        a.session.id = Some(id.clone());
                        let _ = self
                            .links
                            .dispatch
                            .send(DispatchCmd::Holds(i, Some(id.clone())));
                    }
                }
                if let Some(r) = &mut a.task {
                    let ev = claude::fit_event(ev, limit);
                    r.turn_started = true;
                    if let Some(s) = signal {
                        r.signals.note(s);
                    }
                    let progress = TaskProgress {
                        task_id: r.task.task_id.clone(),
                        agent_id: a.spec.id.clone(),
                        event: ev,
                    };
                    let mut env = answer_to(
                        Envelope::new(Payload::TaskProgress(progress)),
                        &r.task.origin,
                    );
                    env.source_agent_id = Some(a.spec.id.clone());
                    let data = Arc::new(env.encode());
                    if let Some(t) = &self.links.transcripts {
                        t.write(&a.spec.id, &r.task.task_id, data.clone(), false);
                    }
                    self.links.outbox.publish_shared(
                        &self.links.table.subject(i, MessageType::TaskProgress),
                        r.task.origin.reply_to.as_deref(),
                        data,
                    );
                }
            }
            Line::Dropped => {}
            Line::NotJson(text) => {
                log::warn!("agent {}: stdout line is not JSON: {text}", a.spec.id);
            }
        }
    }

    /// Agent `i`'s process closed its stdout and lives on: nothing it does
    /// can reach us any more, so it is taken down now rather than when its
    /// task times out or the watchdog notices. A one-shot process that has
    /// printed its result may close stdout on its way out.
    pub(super) fn on_stdout_closed(&mut self, i: AgentIx) {
        let a = &self.agents[i.0];
        if a.spec.protocol == Protocol::Oneshot && a.result_seen {
            return;
        }
        log::warn!("agent {}: closed its stdout but did not exit", a.spec.id);
        self.fail(i, ReasonCode::StdoutClosed);
    }

    /// The `result` event that ends agent `i`'s turn.
    fn on_result(&mut self, i: AgentIx, turn: TurnResult) {
        let now = self.now();
        let a = &mut self.agents[i.0];
        // A stream-json agent answers one turn per task: claude opens each
        // with events (`system/init`, ...) before its `result`. A result
        // before any event of the running task's turn belongs to an earlier
        // turn (an agent that wrote two), and must not answer this task.
        // Unless the task was interrupted: a turn aborted before it began
        // ends in a bare result, and that task is answered `timeout` anyway.
        let stray = match &a.task {
            // claude refusing the session it was started to resume says so
            // in a result before it exits; the exit answers the task.
            None if a.resuming.is_some() => {
                log::debug!("agent {}: a result before it was ready", a.spec.id);
                return;
            }
            None => Some("with no task running"),
            Some(r)
                if a.spec.protocol == Protocol::StreamJson && !r.turn_started && !r.timed_out =>
            {
                Some("before the running task's turn began (a stray from an earlier turn)")
            }
            Some(_) => None,
        };
        if let Some(why) = stray {
            log::warn!("agent {}: ignored a result {why}", a.spec.id);
            return;
        }
        let Some(r) = a.task.take() else { return };
        let timed_out = r
            .timed_out
            .then(|| format!("timed out after {} ms", r.task.timeout.as_millis()));
        let duration_ms = now.saturating_duration_since(r.started).as_millis() as u64;
        let failure = claude::classify(&turn, &r.signals);
        let result = turn.into_task_result(
            &r.task.task_id,
            &a.spec.id,
            duration_ms,
            failure.map(|f| f.kind),
            timed_out,
        );
        a.cost_usd = (a.cost_usd + result.total_cost_usd.unwrap_or(0.0)).min(1e12);
        let moved = a
            .session
            .count(result.session_id.as_deref(), result.usage.as_ref());
        if moved && a.spec.protocol == Protocol::StreamJson {
            let id = a.session.id.clone();
            let _ = self.links.dispatch.send(DispatchCmd::Holds(i, id));
        }
        self.settle(i, r.task, result, failure.and_then(|f| f.resets_at));
        let a = &mut self.agents[i.0];
        match a.spec.protocol {
            Protocol::Oneshot => {
                // The task is answered; the agent is free once its process
                // has gone, which it should do by itself.
                a.result_seen = true;
                let run = a.run;
                self.schedule(LINGER_AFTER_RESULT, Timer::Linger { agent: i, run });
            }
            _ => {
                if a.state == AgentState::Busy {
                    self.set_state(i, AgentState::Idle);
                } else if a.state == AgentState::Paused {
                    a.paused_from = Some(AgentState::Idle);
                }
            }
        }
    }

    /// Publishes a task's result on the agent's subject and to the sender,
    /// cut to the largest message that can go out (the configured
    /// `max_message_size`, or the NATS server's `max_payload` when smaller):
    /// a completed, paid-for result must reach its sender, if shortened.
    pub(super) fn publish_result(&self, i: AgentIx, task: &Task, result: TaskResult) {
        if task.session.is_some() || self.agents[i.0].session.id.is_some() {
            // A task of a claude session (named, or the one its process is
            // in) is over. Told to the dispatcher once the event is
            // handled: by then the agent that ran it has been offered
            // again, and may take the session's next task itself.
            self.released.borrow_mut().push(task.seq);
        }
        let mut env = answer_to(Envelope::new(Payload::TaskResult(result)), &task.origin);
        env.source_agent_id = Some(self.agents[i.0].spec.id.clone());
        let durable = self.links.pump.as_ref().zip(task.receipt.as_deref());
        if let Some((pump, receipt)) = durable {
            // A task from the stream is not lost with this daemon: given
            // back, another daemon (or this one, restarted) runs it.
            if self.shutdown.is_some() && env_status(&env) == Some(TaskStatus::Cancelled) {
                log::info!("task {}: given back to the stream", task.shown());
                let _ = pump.send(durable::release(receipt));
                return;
            }
        }
        let limit = self.wire_limit();
        let Some(bytes) = env.encode_within(limit) else {
            log::error!(
                "agent {}: the result of task {} cannot be made to fit {limit} bytes",
                self.agents[i.0].spec.id,
                task.task_id
            );
            return;
        };
        let bytes = Arc::new(bytes);
        if let Some(t) = &self.links.transcripts {
            t.write(
                &self.agents[i.0].spec.id,
                &task.task_id,
                bytes.clone(),
                true,
            );
        }
        if let Some((pump, receipt)) = durable {
            let live = durable::live_subjects(&self.links.table, task, MessageType::TaskResult);
            let _ = pump.send(JsCmd::Finish(durable::finish(
                receipt,
                &task.task_id,
                bytes,
                live,
            )));
            return;
        }
        self.links.outbox.publish_shared(
            &self.links.table.subject(i, MessageType::TaskResult),
            task.origin.reply_to.as_deref(),
            bytes,
        );
    }

    /// The largest message that can go out: `max_message_size`, or the
    /// NATS server's `max_payload` when it is smaller.
    pub(super) fn wire_limit(&self) -> usize {
        let configured = self.links.max_message_size;
        self.links
            .nats
            .max_payload()
            .map_or(configured, |p| p.min(configured))
    }

    /// Answers a task that was not run (again): `cancelled`.
    pub(super) fn answer_unstarted(
        &self,
        i: AgentIx,
        task: &Task,
        status: TaskStatus,
        why: String,
    ) {
        self.answer_with(
            i,
            task,
            status,
            ErrorKind::Cancelled,
            vec![why],
            task.submitted,
        );
    }

    /// Answers a task with no result of its own (it never ran, or its agent
    /// died under it).
    pub(super) fn answer_with(
        &self,
        i: AgentIx,
        task: &Task,
        status: TaskStatus,
        kind: ErrorKind,
        errors: Vec<String>,
        since: Instant,
    ) {
        self.publish_result(
            i,
            task,
            self.bare_result(i, task, status, kind, errors, since),
        );
    }

    /// A result with no output of the agent's: what we know of the task.
    pub(super) fn bare_result(
        &self,
        i: AgentIx,
        task: &Task,
        status: TaskStatus,
        kind: ErrorKind,
        errors: Vec<String>,
        since: Instant,
    ) -> TaskResult {
        TaskResult {
            task_id: task.task_id.clone(),
            agent_id: self.agents[i.0].spec.id.clone(),
            status,
            result: None,
            errors: Some(errors),
            duration_ms: self.now().saturating_duration_since(since).as_millis() as u64,
            num_turns: None,
            total_cost_usd: None,
            usage: None,
            session_id: None,
            error_kind: Some(kind),
            attempts: task.attempts,
        }
    }
}
