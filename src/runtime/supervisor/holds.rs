//! What the supervisor does with accounts and failures: lends an idle agent
//! to the dispatcher only while its account takes tasks, acts on holds and
//! recoveries (alerts, taking idle agents back, the timer for the hold's
//! end), and settles each task that ran: put back after an account failure,
//! retried after a transient one, answered otherwise.

use std::time::Duration;

use serde_json::json;

use super::timers::Timer;
use super::Supervisor;
use crate::message::dispatcher::{DispatchCmd, Task};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::failures::{ErrorKind, HoldReason};
use crate::message::router::{alert, answer_to, AgentIx, Origin};
use crate::message::schemas::{
    AgentState, AlertCode, RawJson, Severity, TaskProgress, TaskResult, TaskStatus,
};
use crate::runtime::accounts::{rfc3339_ms, Change};
use crate::runtime::tracker::TrackCmd;

/// The longest wait before a retry, however many came before.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// How often today's spend is handed to the tracker to keep, at most.
const SAVE_SPEND_EVERY: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Agent `i` is idle: lend it to the dispatcher if its account takes
    /// tasks (a held account's agents wait; a half-open one lends one).
    pub(super) fn offer(&self, i: AgentIx) {
        if self.links.accounts.admit(i) {
            let _ = self.links.dispatch.send(DispatchCmd::Ready(i));
        }
    }

    /// Agent `i` left idle without a task: the dispatcher's loan is taken
    /// back.
    pub(super) fn withdraw(&mut self, i: AgentIx) {
        let _ = self.links.dispatch.send(DispatchCmd::NotReady(i));
    }

    /// Agent `i` was allowed to start a task that then did not run: a
    /// half-open account's probe slot is free again.
    pub(super) fn release_probe(&mut self, i: AgentIx) {
        if let Some(change) = self.links.accounts.unstart(i) {
            self.apply(i, change);
        }
    }

    /// Acts on what changed in an account; `i` is the agent whose outcome
    /// changed it (the alert names it).
    pub(super) fn apply(&mut self, i: AgentIx, change: Change) {
        match change {
            Change::Held {
                account,
                reason,
                until,
                until_ms,
                generation,
                fresh,
            } => {
                self.links.accounts.mark(&self.links.holds, account);
                for a in self.idle_of(account) {
                    let _ = self.links.dispatch.send(DispatchCmd::NotReady(a));
                }
                self.timers.at(
                    until,
                    Timer::HoldEnds {
                        account,
                        generation,
                    },
                );
                let name = self.links.accounts.name(account).to_string();
                let until_text = rfc3339_ms(until_ms);
                if !fresh {
                    log::info!("account {name}: held ({reason}) until {until_text}");
                    return;
                }
                let auth = reason == HoldReason::Auth;
                let hint = if auth {
                    format!("; log in again, then run `mister-smith resume --account {name}`")
                } else {
                    String::new()
                };
                let message = format!(
                    "account {name} held ({reason}) until {until_text}: its agents take no tasks until then{hint}"
                );
                log::error!("ALERT {message}");
                let mut env = alert(
                    if auth {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    AlertCode::AccountHeld,
                    message,
                    Some(&self.agents[i.0].spec.id),
                    None,
                );
                env.source_agent_id = Some(self.agents[i.0].spec.id.clone());
                if let Payload::SystemAlert(al) = &mut env.payload {
                    al.account = Some(name);
                    al.reason = Some(reason);
                    al.until = Some(until_text);
                }
                self.publish(i, MessageType::SystemAlert, &env);
            }
            Change::HalfOpen { account } => {
                log::info!(
                    "account {}: hold over; one task probes it",
                    self.links.accounts.name(account)
                );
                for a in self.idle_of(account) {
                    self.offer(a);
                }
            }
            Change::Recovered {
                account,
                by_operator,
            } => {
                self.timers
                    .cancel(|t| matches!(t, Timer::HoldEnds { account: a, .. } if *a == account));
                self.links.accounts.mark(&self.links.holds, account);
                let name = self.links.accounts.name(account).to_string();
                let message = if by_operator {
                    format!("account {name}: hold lifted by an operator")
                } else {
                    format!("account {name} works again: its agents take tasks")
                };
                log::warn!("{message}");
                let mut env = alert(
                    Severity::Info,
                    AlertCode::AccountRecovered,
                    message,
                    Some(&self.agents[i.0].spec.id),
                    None,
                );
                if let Payload::SystemAlert(al) = &mut env.payload {
                    al.account = Some(name);
                }
                self.publish(i, MessageType::SystemAlert, &env);
                for a in self.idle_of(account) {
                    self.offer(a);
                }
            }
        }
    }

    /// The idle agents (with a process, or one-shot) of `account`.
    fn idle_of(&self, account: usize) -> Vec<AgentIx> {
        self.links
            .accounts
            .agents_of(account)
            .filter(|a| {
                let ag = &self.agents[a.0];
                ag.state == AgentState::Idle && ag.spec.protocol.takes_tasks()
            })
            .collect()
    }

    /// [`Timer::HoldEnds`].
    pub(super) fn hold_ends(&mut self, account: usize, generation: u64) {
        let (now, wall) = (self.now(), self.clock.wall_ms());
        if let Some(change) = self
            .links
            .accounts
            .hold_ended(account, generation, now, wall)
        {
            let first = self.links.accounts.agents_of(account).next();
            if let Some(i) = first {
                self.apply(i, change);
            }
        }
    }

    /// `resume --account NAME`, answered on the request's reply subject.
    pub(super) fn resume_account(&mut self, name: &str, origin: &Origin) {
        let (code, severity, message) = match self.links.accounts.resume(name) {
            Err(()) => (
                AlertCode::NoRoute,
                Severity::Error,
                format!("no account {name} on daemon {}", self.links.table.daemon_id),
            ),
            Ok(None) => (
                AlertCode::AccountRecovered,
                Severity::Info,
                format!("account {name} was not held"),
            ),
            Ok(Some(change)) => {
                let account = self.links.accounts.find(name).unwrap_or(0);
                let first = self.links.accounts.agents_of(account).next();
                if let Some(i) = first {
                    self.apply(i, change);
                }
                (
                    AlertCode::AccountRecovered,
                    Severity::Info,
                    format!("account {name}: hold lifted"),
                )
            }
        };
        if let Some(reply) = &origin.reply_to {
            let mut env = alert(severity, code, message, None, None);
            if let Payload::SystemAlert(al) = &mut env.payload {
                al.account = Some(name.to_string());
            }
            env.metadata
                .insert("daemon_id".into(), self.links.table.daemon_id.clone());
            self.links.outbox.reply(reply, &answer_to(env, origin));
        }
    }

    /// Task `task` ran on agent `i` and ended with `result` (`resets_at`:
    /// when claude said a limit resets). The account learns of it; then the
    /// task goes back to the queue (its account failed it: it did no work),
    /// waits to be retried (a transient failure, while its retry budget and
    /// deadline last), or is answered.
    /// Returns whether the task was answered (and so ended here).
    pub(super) fn settle(
        &mut self,
        i: AgentIx,
        task: Task,
        mut result: TaskResult,
        resets_at: Option<i64>,
    ) -> bool {
        result.attempts = task.attempts;
        let (now, wall) = (self.now(), self.clock.wall_ms());
        let kind = result.error_kind;
        let cost = result.total_cost_usd.unwrap_or(0.0);
        let changes = self
            .links
            .accounts
            .on_result(i, kind, resets_at, cost, now, wall);
        for change in changes {
            self.apply(i, change);
        }
        if cost > 0.0 && self.links.accounts.has_budget(i) {
            // A budget must not be overrun by a restart: kept at once.
            self.save_spend();
        } else if cost > 0.0 && !self.spend_timer {
            // Else at most once a second: a burst of results costs one
            // message to the tracker, not one each.
            self.spend_timer = true;
            self.schedule(SAVE_SPEND_EVERY, Timer::SaveSpend);
        }
        let running = self.shutdown.is_none() && now < task.deadline;
        let failed = result.status == TaskStatus::Failed;
        let id = self.agents[i.0].spec.id.clone();
        if failed && running && matches!(kind, Some(ErrorKind::Auth | ErrorKind::RateLimited)) {
            let k = kind.unwrap_or(ErrorKind::Other);
            log::warn!(
                "agent {id}: task {} failed ({k}): back to the queue until its account works again",
                task.shown()
            );
            self.tell(
                &task,
                &id,
                json!({"type": "system", "subtype": "requeued", "error_kind": k}),
            );
            let _ = self
                .links
                .dispatch
                .send(DispatchCmd::Requeue(Box::new(task)));
            return false;
        }
        if let Some(k) = kind.filter(|k| failed && running && k.is_retried()) {
            if task.attempts <= task.retries {
                let doublings = task.attempts.saturating_sub(1).min(20);
                let delay = self
                    .links
                    .retry_delay
                    .saturating_mul(1u32 << doublings)
                    .min(MAX_RETRY_DELAY);
                if now + delay < task.deadline {
                    log::warn!(
                        "agent {id}: task {} failed ({k}, attempt {}): retrying in {} ms",
                        task.shown(),
                        task.attempts,
                        delay.as_millis()
                    );
                    self.tell(
                        &task,
                        &id,
                        json!({"type": "system", "subtype": "retrying", "error_kind": k,
                            "attempt": task.attempts, "delay_ms": delay.as_millis() as u64}),
                    );
                    let seq = task.seq;
                    self.retrying.insert(seq, (i, task));
                    self.schedule(delay, Timer::Retry { seq });
                    return false;
                }
            }
        }
        self.agents[i.0].count_task(result.status, result.error_kind);
        log::info!(
            "agent {id}: task {} {}{}",
            task.shown(),
            super::tasks::status_word(result.status),
            result
                .error_kind
                .map(|k| format!(" ({k})"))
                .unwrap_or_default()
        );
        self.publish_result(i, &task, result);
        true
    }

    /// [`Timer::SaveSpend`], and at the end: today's spend to the tracker.
    pub(super) fn save_spend(&mut self) {
        self.spend_timer = false;
        let book = self.links.accounts.book(self.clock.wall_ms());
        let _ = self.links.tracker.send(TrackCmd::Spend(book));
    }

    /// [`Timer::Retry`]: the task goes back to the queue.
    pub(super) fn retry_now(&mut self, seq: u64) {
        if let Some((_, task)) = self.retrying.remove(&seq) {
            let _ = self
                .links
                .dispatch
                .send(DispatchCmd::Requeue(Box::new(task)));
        }
    }

    /// A progress event from the daemon itself to the task's sender.
    fn tell(&self, task: &Task, agent_id: &str, event: serde_json::Value) {
        let Some(reply) = task.origin.reply_to.as_deref() else {
            return;
        };
        let progress = TaskProgress {
            task_id: task.task_id.clone(),
            agent_id: agent_id.to_string(),
            event: RawJson::from_value(&event),
        };
        let env = answer_to(Envelope::new(Payload::TaskProgress(progress)), &task.origin);
        let data = std::sync::Arc::new(env.encode());
        if let Some(t) = &self.links.transcripts {
            t.write(agent_id, &task.task_id, data.clone(), false);
        }
        self.links.outbox.publish_shared(reply, None, data);
    }
}
