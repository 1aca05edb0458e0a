//! Starting and stopping agents, their exits, the restart policy, health
//! verdicts (the control commands are in `control`).

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use super::agent::{words, Reason, Takedown};
use super::timers::Timer;
use super::{Supervisor, STDIN_GRACE};
use crate::config::Protocol;
use crate::message::dispatcher::DispatchCmd;
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::failures::ErrorKind;
use crate::message::router::{alert, AgentIx};
use crate::message::schemas::{AgentState, AlertCode, ReasonCode, Severity, TaskStatus};
use crate::runtime::backoff::Decision;
use crate::runtime::claude;
use crate::runtime::error::ProcessError;
use crate::runtime::events::{Event, Verdict};
use crate::runtime::health_monitor::HealthCmd;
use crate::runtime::lifecycle::transition;
use crate::runtime::process::{describe_exit, ChildHandle, ChildSink, SpawnRequest};
use crate::runtime::tracker::TrackCmd;

impl Supervisor {
    /// Moves agent `i` to `to`, logging and publishing the transition; an
    /// illegal one is logged and refused.
    pub(super) fn set_state(&mut self, i: AgentIx, to: AgentState) -> bool {
        let now = self.now();
        let a = &mut self.agents[i.0];
        let from = match transition(&mut a.state, to) {
            Ok(from) => from,
            Err(e) => {
                log::warn!("agent {}: {e} refused", a.spec.id);
                return false;
            }
        };
        // Idle and busy swap on every task, which has its own started and
        // completed lines: at info they would double the log (and its
        // writes on the task's path).
        let level = match (from, to) {
            (AgentState::Idle, AgentState::Busy) | (AgentState::Busy, AgentState::Idle) => {
                log::Level::Debug
            }
            _ => log::Level::Info,
        };
        match &a.child {
            Some(c) => log::log!(
                level,
                "agent {}: {from} -> {to} (pid {})",
                a.spec.id,
                c.pid()
            ),
            None => log::log!(level, "agent {}: {from} -> {to}", a.spec.id),
        }
        match to {
            AgentState::Initializing => a.up_since = Some(now),
            AgentState::Terminated | AgentState::Error => a.up_since = None,
            AgentState::Idle | AgentState::Busy
                if a.reason
                    .as_ref()
                    .is_some_and(|r| r.code == ReasonCode::Routine) =>
            {
                a.reason = None;
            }
            _ => {}
        }
        if a.spec.protocol.takes_tasks() {
            if to == AgentState::Terminated && !a.restarting {
                // Tasks would wait for nobody: the dispatcher cancels the
                // queued ones and refuses new ones until it starts again.
                let why = a.reason.as_ref().map_or("terminated", |r| r.text.as_str());
                let _ = self
                    .links
                    .dispatch
                    .send(DispatchCmd::Down(i, why.to_string()));
            } else if from == AgentState::Terminated {
                let _ = self.links.dispatch.send(DispatchCmd::Up(i));
            }
        }
        // A task waits for this process (restarted to continue its
        // session): it runs now.
        let resumed = to == AgentState::Idle && a.resuming.is_some();
        // A spec changed by a reload, or a session to end, waits for the
        // agent to be idle.
        let respec = to == AgentState::Idle
            && !resumed
            && (a.next_spec.is_some()
                || a.resumed
                || (a.spec.protocol == Protocol::StreamJson
                    && a.spec.recycle.due(a.session.tasks, a.session.input_tokens)));
        if a.spec.protocol.takes_tasks() {
            if to == AgentState::Idle {
                if !respec && !resumed {
                    self.offer(i);
                }
            } else if from == AgentState::Idle && to != AgentState::Busy {
                // Busy only ever follows the dispatcher's own assignment, so
                // it knows already; waking its thread in the task's first
                // microseconds would cost the agent a CPU on a small host.
                self.withdraw(i);
            }
        }
        self.publish_status(i, from);
        if resumed {
            self.run_resumed(i);
        } else if respec {
            if self.agents[i.0].next_spec.is_some() {
                self.apply_next_spec(i);
            } else if std::mem::take(&mut self.agents[i.0].resumed) {
                // Its task went while it started in that task's session.
                let why = "starting fresh: the task it resumed a session for is gone".into();
                self.routine_restart(i, why);
            } else {
                self.recycle(i);
            }
        }
        true
    }

    /// Agent `i` reached its `recycle` threshold: restarted now, between
    /// tasks, so the next task starts in a fresh session.
    pub(super) fn recycle(&mut self, i: AgentIx) {
        let a = &mut self.agents[i.0];
        log::info!(
            "agent {}: recycled after {} tasks and {} input tokens in session {}",
            a.spec.id,
            a.session.tasks,
            a.session.input_tokens,
            a.session.id.as_deref().unwrap_or("-")
        );
        let why = format!(
            "recycled after {} tasks: a fresh claude session",
            a.session.tasks
        );
        self.routine_restart(i, why);
    }

    /// Restarts agent `i` as part of its work (`why`): not counted as a
    /// restart, and `health` counts it as healthy meanwhile.
    pub(super) fn routine_restart(&mut self, i: AgentIx, why: String) {
        let a = &mut self.agents[i.0];
        a.reason = Some(Reason::new(ReasonCode::Routine, why));
        a.routine = true;
        self.stop(i, Takedown::Restart);
    }

    /// Starts agent `i`: spawns its long-lived process, or for one-shot
    /// agents (a process per task) just marks it ready.
    pub(super) fn start(&mut self, i: AgentIx) {
        self.start_with(i, false);
    }

    /// Like [`Supervisor::start`], but on the spawner's pool: the cold
    /// start's many execs then overlap.
    pub(super) fn start_pooled(&mut self, i: AgentIx) {
        self.start_with(i, true);
    }

    fn start_with(&mut self, i: AgentIx, pooled: bool) {
        if self.agents[i.0].child.is_some() {
            return;
        }
        // The reason for the last stop does not carry over to the start,
        // unless the restart is routine: it is shown until the agent is up.
        let reason = match &self.agents[i.0].reason {
            Some(r) if r.code == ReasonCode::Routine => None,
            _ => self.agents[i.0].reason.take(),
        };
        if !self.set_state(i, AgentState::Initializing) {
            self.agents[i.0].reason = reason;
            return;
        }
        let a = &mut self.agents[i.0];
        a.run += 1;
        a.takedown = None;
        a.routine = false;
        a.health_failures = 0;
        a.paused_from = None;
        if a.spec.protocol == Protocol::Oneshot {
            self.set_state(i, AgentState::Idle);
            return;
        }
        let run = a.run;
        let resume = self.resume_of(i);
        let a = &mut self.agents[i.0];
        a.resumed = resume.is_some();
        let req = SpawnRequest {
            spec: a.spec.clone(),
            prompt: None,
            trace_id: None,
            resume,
            max_message_size: self.links.max_message_size,
        };
        let sink = self.child_sink(i, run);
        if pooled {
            let tx = self.events_tx.clone();
            self.pending_spawns += 1;
            self.spawner.spawn_later(
                req,
                sink,
                Box::new(move |result| {
                    let _ = tx.send(Event::Spawned {
                        agent: i,
                        run,
                        result,
                    });
                }),
            );
            return;
        }
        let result = self.spawner.spawn(req, sink);
        self.attach(i, run, result);
    }

    /// Where the reports of agent `i`'s run `run` go: the event channel,
    /// tagged.
    pub(super) fn child_sink(&self, agent: AgentIx, run: u64) -> ChildSink {
        let tx = self.events_tx.clone();
        Box::new(move |msg| {
            let _ = tx.send(Event::Child { agent, run, msg });
        })
    }

    /// Takes a freshly spawned process (or the failure to spawn it) into
    /// agent `i`'s run `run`.
    pub(super) fn attach(
        &mut self,
        i: AgentIx,
        run: u64,
        result: Result<Box<dyn ChildHandle>, ProcessError>,
    ) {
        let now = self.now();
        let a = &mut self.agents[i.0];
        match result {
            Ok(child) => {
                a.last_output = now;
                a.child_since = now;
                a.session = Default::default();
                let pid = child.pid();
                let _ = self.links.tracker.send(TrackCmd::Up {
                    id: a.spec.id.clone(),
                    pgid: pid,
                });
                if a.spec.protocol == Protocol::StreamJson {
                    let id = format!("init-{}-{run}", a.spec.id);
                    child.write_line(claude::initialize_request(&id));
                    a.init_request = Some(id);
                    a.child = Some(child);
                    let t = a.spec.startup_timeout;
                    log::debug!("agent {}: started pid {pid}, sent initialize", a.spec.id);
                    self.schedule(t, Timer::Startup { agent: i, run });
                } else {
                    a.child = Some(child);
                    self.set_state(i, AgentState::Idle);
                    self.watch_health(i);
                }
            }
            Err(e) => {
                log::error!("{e}");
                a.reason = Some(Reason::new(ReasonCode::SpawnFailed, e.cause()));
                if let Some(mut task) = a.resuming.take() {
                    task.attempts += 1;
                    let errors = vec![format!("cannot start the agent: {}", e.cause())];
                    let result = self.bare_result(
                        i,
                        &task,
                        TaskStatus::Failed,
                        ErrorKind::Other,
                        errors,
                        task.submitted,
                    );
                    self.settle(i, task, result, None);
                }
                self.set_state(i, AgentState::Error);
                self.after_exit(i, true, Duration::ZERO, Vec::new());
            }
        }
    }

    pub(super) fn watch_health(&self, i: AgentIx) {
        let a = &self.agents[i.0];
        if let (Some(cmd), Some(c)) = (&a.spec.health.command, &a.child) {
            let _ = self.links.health.send(HealthCmd::Watch {
                agent: i,
                run: a.run,
                id: a.spec.id.clone(),
                pid: c.pid(),
                command: cmd.clone(),
                interval: a.spec.health.interval,
                timeout: a.spec.health.timeout,
            });
        }
    }

    /// Takes agent `i` down because of a failure we detected: `error`, then
    /// SIGKILL to the group; its exit goes through the restart policy.
    pub(super) fn fail(&mut self, i: AgentIx, why: ReasonCode) {
        if self.agents[i.0].child.is_none() {
            return;
        }
        if matches!(
            self.agents[i.0].takedown,
            Some(Takedown::Stop | Takedown::Restart)
        ) {
            // Already on its way down at someone's request: finish it, but
            // keep the request (a stop must not turn into a restart).
            self.signal(i, libc::SIGKILL);
            return;
        }
        if self.agents[i.0].state != AgentState::Error {
            self.set_state(i, AgentState::Error);
        }
        let a = &mut self.agents[i.0];
        if a.reason.is_none() {
            a.reason = Some(Reason::of(why));
        }
        a.takedown = Some(Takedown::Failure(why));
        // A stopped process dies of SIGKILL too; no SIGCONT needed.
        self.signal(i, libc::SIGKILL);
    }

    /// Begins stopping agent `i`: close stdin, SIGTERM, SIGKILL at
    /// `stop_timeout_ms`.
    pub(super) fn stop(&mut self, i: AgentIx, why: Takedown) {
        if self.agents[i.0].child.is_none() {
            self.stop_without_process(i, why);
            return;
        }
        let a = &mut self.agents[i.0];
        match (a.takedown, why) {
            // A stop overrides anything; nothing else overrides a takedown
            // already under way.
            (Some(_), Takedown::Stop) | (None, _) => a.takedown = Some(why),
            (Some(_), _) => return,
        }
        if a.state != AgentState::Stopping {
            self.set_state(i, AgentState::Stopping);
        }
        let a = &mut self.agents[i.0];
        let run = a.run;
        let timeout = a.spec.stop_timeout;
        let was_paused = a.paused_from.take().is_some();
        let had_stdin = a.child.as_ref().is_some_and(|c| c.has_stdin());
        if let Some(c) = a.child.as_mut() {
            c.close_stdin();
        }
        if had_stdin && !was_paused && a.task.is_none() {
            // An idle stream-json agent exits by itself on end of input.
            let grace = STDIN_GRACE.min(timeout / 4);
            self.schedule(grace, Timer::Term { agent: i, run });
        } else {
            self.send_term(i);
        }
        self.schedule(timeout, Timer::Kill { agent: i, run });
    }

    /// `stop` for an agent with no process: a pending restart is cancelled
    /// and the agent is down for good (or, for `restart`, started again).
    fn stop_without_process(&mut self, i: AgentIx, why: Takedown) {
        self.timers.cancel(|t| *t == Timer::Restart(i));
        let state = self.agents[i.0].state;
        if why == Takedown::Restart {
            self.agents[i.0].book.reset();
            if state == AgentState::Idle {
                // A one-shot agent between tasks has nothing to restart.
                return;
            }
            if state == AgentState::Error {
                self.agents[i.0].restarting = true;
                self.set_state(i, AgentState::Terminated);
                self.agents[i.0].restarting = false;
            }
            self.start(i);
            return;
        }
        if state == AgentState::Terminated {
            return;
        }
        if state != AgentState::Error {
            self.set_state(i, AgentState::Stopping);
        }
        self.set_state(i, AgentState::Terminated);
    }

    pub(super) fn send_term(&mut self, i: AgentIx) {
        self.signal(i, libc::SIGTERM);
        // A stopped process only acts on SIGTERM once continued.
        self.signal(i, libc::SIGCONT);
    }

    pub(super) fn signal(&self, i: AgentIx, sig: i32) {
        let a = &self.agents[i.0];
        if let Some(c) = &a.child {
            if let Err(e) = c.signal_group(sig) {
                log::error!("agent {}: cannot signal group {}: {e}", a.spec.id, c.pid());
            }
        }
    }

    /// Agent `i`'s process exited (and its pipes are drained).
    pub(super) fn on_exit(&mut self, i: AgentIx, status: io::Result<ExitStatus>) {
        let now = self.now();
        let a = &mut self.agents[i.0];
        let Some(child) = a.child.take() else { return };
        let uptime = now.saturating_duration_since(a.child_since);
        let _ = self.links.health.send(HealthCmd::Unwatch { agent: i });
        let _ = self.links.tracker.send(TrackCmd::Down {
            id: a.spec.id.clone(),
        });
        a.init_request = None;
        a.paused_from = None;
        a.result_seen = false;
        let how = describe_exit(&status);
        let clean = matches!(&status, Ok(s) if s.success());
        let tail = child.stderr_lines();
        // The io thread reaps the child once the handle is gone.
        drop(child);
        let takedown = a.takedown.take();
        if let Some(r) = a.task.take() {
            // The task did not get its result: answer it from what we know.
            let (status, kind, why) = match takedown {
                _ if r.timed_out => (
                    TaskStatus::Timeout,
                    ErrorKind::Timeout,
                    format!("timed out after {} ms", r.task.timeout.as_millis()),
                ),
                Some(Takedown::Stop) | Some(Takedown::Restart) => (
                    TaskStatus::Cancelled,
                    ErrorKind::Cancelled,
                    format!("the agent was stopped ({how})"),
                ),
                Some(Takedown::Failure(why)) => (
                    TaskStatus::Failed,
                    if why == ReasonCode::Hung {
                        ErrorKind::Hung
                    } else {
                        ErrorKind::Crashed
                    },
                    format!("the agent was taken down: {}", words(why)),
                ),
                // A one-shot claude asked to continue a session it does
                // not know: the task's fault, not worth a retry.
                None if r.task.session.is_some() && claude::no_conversation(&tail) => (
                    TaskStatus::Failed,
                    ErrorKind::Other,
                    format!(
                        "claude could not continue session {} ({how})",
                        r.task.session.as_deref().unwrap_or("-")
                    ),
                ),
                None => (
                    TaskStatus::Failed,
                    ErrorKind::Crashed,
                    format!("the agent's process ended before its result ({how})"),
                ),
            };
            log::warn!("agent {}: task {} ended: {why}", a.spec.id, r.task.shown());
            let mut errors = vec![why];
            errors.extend(tail.iter().rev().take(5).rev().cloned());
            let result = self.bare_result(i, &r.task, status, kind, errors, r.started);
            self.settle(i, r.task, result, None);
        }
        // Its process is gone, and its session with it (after the running
        // task is answered, so that the task releases the session).
        self.drop_session(i);
        // A task waiting for this process (to continue its session in it)
        // keeps waiting only through a restart.
        let refused = takedown != Some(Takedown::Restart)
            && self.agents[i.0].resuming.is_some()
            && self.resume_failed(i, takedown, &how, &tail)
            && self.shutdown.is_none();
        let a = &mut self.agents[i.0];
        match takedown {
            Some(Takedown::Stop) => {
                log::info!("agent {}: {how}", a.spec.id);
                if a.state == AgentState::Error {
                    self.set_state(i, AgentState::Stopping);
                }
                self.set_state(i, AgentState::Terminated);
            }
            Some(Takedown::Restart) => {
                log::info!("agent {}: {how}; starting it again", a.spec.id);
                // Passing through: its queued tasks wait for the new run.
                a.restarting = self.shutdown.is_none();
                self.set_state(i, AgentState::Terminated);
                self.agents[i.0].restarting = false;
                if self.shutdown.is_none() {
                    // A recycle or a reload's restart is routine, not worth counting.
                    if !std::mem::take(&mut self.agents[i.0].routine) {
                        self.agents[i.0].restarts += 1;
                    }
                    self.start(i);
                }
            }
            Some(Takedown::Failure(why)) => {
                log::warn!("agent {}: {how} (taken down: {})", a.spec.id, words(why));
                self.after_exit(i, true, uptime, tail);
            }
            None if refused => {
                // Nothing is wrong with the agent: it starts again, fresh.
                log::info!(
                    "agent {}: {how}: claude knew no such session; starting it again",
                    a.spec.id
                );
                a.reason = Some(Reason::new(
                    ReasonCode::Routine,
                    "starting again: claude knew no such session",
                ));
                self.set_state(i, AgentState::Stopping);
                self.agents[i.0].restarting = true;
                self.set_state(i, AgentState::Terminated);
                self.agents[i.0].restarting = false;
                self.start(i);
            }
            None if a.spec.protocol == Protocol::Oneshot && a.state == AgentState::Busy => {
                // A one-shot task process ending is the normal case.
                log::debug!("agent {}: task process {how}", a.spec.id);
                self.set_state(i, AgentState::Idle);
            }
            None => {
                if clean {
                    log::warn!("agent {}: {how}", a.spec.id);
                } else if tail.is_empty() {
                    log::warn!("agent {}: {how}; stderr was empty", a.spec.id);
                } else {
                    log::warn!(
                        "agent {}: {how}; last stderr: {}",
                        a.spec.id,
                        tail.last().map_or("", String::as_str)
                    );
                }
                a.reason = Some(Reason::new(ReasonCode::Exited, how));
                if a.state != AgentState::Error {
                    self.set_state(i, AgentState::Error);
                }
                self.after_exit(i, !clean, uptime, tail);
            }
        }
        if self.agents[i.0].child.is_none() {
            if let Some(task) = self.agents[i.0].resuming.take() {
                self.abandon_resume(i, task, "the agent stopped before the task started");
            }
        }
    }

    /// Applies the restart policy to agent `i`, now in `error` with no
    /// process.
    pub(super) fn after_exit(
        &mut self,
        i: AgentIx,
        failed: bool,
        uptime: Duration,
        tail: Vec<String>,
    ) {
        if self.shutdown.is_some() {
            self.set_state(i, AgentState::Terminated);
            return;
        }
        let jitter = self.jitter.next_unit();
        let now = self.now();
        let a = &mut self.agents[i.0];
        let decision = a.book.decide(&a.spec.restart, failed, uptime, now, jitter);
        let policy = a.spec.restart.policy.as_str();
        match decision {
            Decision::Restart { delay, attempt } => {
                a.restarts += 1;
                log::info!(
                    "agent {}: restarting in {} ms (policy {policy}, attempt {attempt})",
                    a.spec.id,
                    delay.as_millis(),
                );
                a.reason = Some(Reason::new(
                    ReasonCode::Restarting,
                    format!("restarting (attempt {attempt})"),
                ));
                if delay.is_zero() {
                    self.start(i);
                } else {
                    self.schedule(delay, Timer::Restart(i));
                }
            }
            Decision::Stay => {
                log::info!("agent {}: not restarted (policy {policy})", a.spec.id);
                let cause = a.reason.take().map_or_else(|| "exited".into(), |r| r.text);
                a.reason = Some(Reason::new(
                    ReasonCode::NotRestarted,
                    format!("{cause}; policy {policy} does not restart it"),
                ));
                self.set_state(i, AgentState::Terminated);
            }
            Decision::GiveUp { restarts } => {
                let message = format!(
                    "restart budget spent ({restarts} restarts within {} ms): terminated",
                    a.spec.restart.window.as_millis()
                );
                log::error!("ALERT agent {}: {message}", a.spec.id);
                a.reason = Some(Reason::of(ReasonCode::RestartBudgetSpent));
                let mut env = alert(
                    Severity::Critical,
                    AlertCode::RestartBudgetSpent,
                    message,
                    Some(&a.spec.id),
                    None,
                );
                if let Payload::SystemAlert(al) = &mut env.payload {
                    al.stderr = Some(tail);
                }
                env.source_agent_id = Some(a.spec.id.clone());
                self.publish(i, MessageType::SystemAlert, &env);
                self.set_state(i, AgentState::Terminated);
            }
        }
    }

    /// A health check's verdict on agent `i`.
    pub(super) fn on_health(&mut self, i: AgentIx, verdict: Verdict) {
        let a = &mut self.agents[i.0];
        if !a.state.is_healthy() {
            return;
        }
        match verdict {
            Verdict::Healthy => {
                if a.health_failures > 0 {
                    log::info!("agent {}: health check passes again", a.spec.id);
                }
                a.health_failures = 0;
            }
            Verdict::Unhealthy(why) => {
                a.health_failures += 1;
                let (n, max) = (a.health_failures, a.spec.health.failure_threshold);
                log::warn!(
                    "agent {}: health check failed ({n}/{max}): {why}",
                    a.spec.id
                );
                if n >= max {
                    a.reason = Some(Reason::new(
                        ReasonCode::Unhealthy,
                        format!("unhealthy: {why}"),
                    ));
                    self.fail(i, ReasonCode::Unhealthy);
                }
            }
        }
    }

    /// Publishes `env` on agent `i`'s subject for its type.
    pub(super) fn publish(&self, i: AgentIx, t: MessageType, env: &Envelope) {
        self.links
            .outbox
            .publish(&self.links.table.subject(i, t), env);
    }
}
