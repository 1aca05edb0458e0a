//! Claude sessions on agents: a task that continues a session its
//! stream-json agent's process is not in (the agent restarts with
//! `--resume` first, then runs it), and what the dispatcher is told so that
//! two tasks of one session never run at once and a session's task finds
//! the agent that holds it.

use super::agent::{words, Takedown};
use super::timers::Timer;
use super::Supervisor;
use crate::message::dispatcher::{DispatchCmd, Task};
use crate::message::failures::ErrorKind;
use crate::message::router::AgentIx;
use crate::message::schemas::{ReasonCode, TaskStatus};
use crate::runtime::claude;

impl Supervisor {
    /// Restarts idle stream-json agent `i` with `--resume` of `task`'s
    /// session (its ordinary args kept); the task runs once the new
    /// process is ready, and its deadline runs meanwhile.
    pub(super) fn resume_for(&mut self, i: AgentIx, task: Task) {
        let (seq, deadline) = (task.seq, task.deadline);
        let a = &mut self.agents[i.0];
        log::info!(
            "agent {}: task {} continues session {}: restarting it with --resume",
            a.spec.id,
            task.shown(),
            task.session.as_deref().unwrap_or("-")
        );
        let why = format!(
            "restarting to continue session {}",
            task.session.as_deref().unwrap_or("-")
        );
        a.resuming = Some(task);
        self.routine_restart(i, why);
        self.timers.at(deadline, Timer::Deadline { agent: i, seq });
    }

    /// The session agent `i` is to continue in its next process, if any.
    pub(super) fn resume_of(&self, i: AgentIx) -> Option<String> {
        self.agents[i.0]
            .resuming
            .as_ref()
            .and_then(|t| t.session.clone())
    }

    /// Agent `i`'s new process is ready: the task it was restarted for
    /// runs now. False when no task waits for it.
    pub(super) fn run_resumed(&mut self, i: AgentIx) -> bool {
        let a = &mut self.agents[i.0];
        let Some(task) = a.resuming.take() else {
            return false;
        };
        a.resumed = false;
        self.send_turn(i, task);
        true
    }

    /// The deadline of the task waiting for agent `i`'s restart passed:
    /// it is answered `timeout`; the agent goes on starting.
    pub(super) fn resume_timed_out(&mut self, i: AgentIx) {
        let Some(task) = self.agents[i.0].resuming.take() else {
            return;
        };
        let why = format!(
            "timed out after {} ms, before its agent was ready to continue session {}",
            task.timeout.as_millis(),
            task.session.as_deref().unwrap_or("-")
        );
        log::warn!(
            "agent {}: task {} {why}",
            self.agents[i.0].spec.id,
            task.shown()
        );
        let result = self.bare_result(
            i,
            &task,
            TaskStatus::Timeout,
            ErrorKind::Timeout,
            vec![why],
            task.submitted,
        );
        self.settle(i, task, result, None);
    }

    /// Agent `i`'s process ended (`takedown` says why, `how` how) before
    /// the task it was restarted for could run: the task is answered. True
    /// when claude did not know the session: then nothing is wrong with the
    /// agent, which starts again at once, fresh.
    pub(super) fn resume_failed(
        &mut self,
        i: AgentIx,
        takedown: Option<Takedown>,
        how: &str,
        tail: &[String],
    ) -> bool {
        let Some(mut task) = self.agents[i.0].resuming.take() else {
            return false;
        };
        let session = task.session.clone().unwrap_or_default();
        let (kind, why) = match takedown {
            Some(Takedown::Stop | Takedown::Restart) => {
                self.abandon_resume(i, task, "the agent was stopped before the task started");
                return false;
            }
            Some(Takedown::Failure(code)) => (
                if code == ReasonCode::Hung {
                    ErrorKind::Hung
                } else {
                    ErrorKind::Crashed
                },
                format!(
                    "the agent was taken down ({}) before it could continue session {session}",
                    words(code)
                ),
            ),
            None => (
                if claude::no_conversation(tail) {
                    ErrorKind::Other
                } else {
                    ErrorKind::Crashed
                },
                format!("claude could not continue session {session} ({how})"),
            ),
        };
        let refused = kind == ErrorKind::Other;
        log::warn!(
            "agent {}: task {} failed: {why}",
            self.agents[i.0].spec.id,
            task.shown()
        );
        let mut errors = vec![why];
        errors.extend(tail.iter().rev().take(5).rev().cloned());
        // The run that failed was the task's.
        task.attempts += 1;
        let result = self.bare_result(i, &task, TaskStatus::Failed, kind, errors, task.submitted);
        self.settle(i, task, result, None);
        refused
    }

    /// Answers `cancelled` a task that waited for agent `i`'s restart.
    pub(super) fn abandon_resume(&mut self, i: AgentIx, task: Task, why: &str) {
        self.agents[i.0].count_task(TaskStatus::Cancelled, Some(ErrorKind::Cancelled));
        self.answer_unstarted(i, &task, TaskStatus::Cancelled, why.into());
        self.release_probe(i);
    }

    /// Agent `i`'s process is gone: it holds no session any more.
    pub(super) fn drop_session(&mut self, i: AgentIx) {
        let a = &mut self.agents[i.0];
        if a.session.id.is_some() {
            let _ = self.links.dispatch.send(DispatchCmd::Holds(i, None));
        }
        a.session = Default::default();
    }

    /// Tells the dispatcher of the session tasks answered while the last
    /// event was handled: after it, so that the agent that ran one has been
    /// offered again and may take the session's next task itself.
    pub(super) fn release_sessions(&mut self) {
        if self.released.borrow().is_empty() {
            return;
        }
        let released = std::mem::take(&mut *self.released.borrow_mut());
        for seq in released {
            let _ = self.links.dispatch.send(DispatchCmd::Release(seq));
        }
    }
}
