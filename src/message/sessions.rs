//! What the dispatcher knows of claude sessions: which have a task out
//! (none other of theirs may start), which agent's process is in which, and
//! which task each agent runs.
//!
//! A task is "of" a session when it names it, and also when it runs in the
//! process that holds it without naming one (its turn goes into that
//! session). A session a busy process moves to (a resume forks a new id,
//! learnt from the first turn's `system/init`) is marked by the same task.
//! Marks are by the task's arrival number and go when the supervisor says
//! the task was answered, or when the task comes back to the queue; not
//! when its agent is offered again, since a task waiting out its retry
//! delay is not answered yet.

use std::collections::HashMap;

use crate::message::queue::Task;
use crate::message::router::AgentIx;

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Sessions with a task out, and that task's sequence number.
    running: HashMap<String, u64>,
    /// The session each agent's process is in, and the other way round.
    holds: Vec<Option<String>>,
    holder: HashMap<String, AgentIx>,
    /// The task each agent was handed last, until it is offered again.
    busy: Vec<Option<u64>>,
}

impl Sessions {
    pub(crate) fn new(agents: usize) -> Sessions {
        Sessions {
            holds: vec![None; agents],
            busy: vec![None; agents],
            ..Sessions::default()
        }
    }

    /// Room for `more` agents added after the ones known.
    pub(crate) fn grow(&mut self, more: usize) {
        self.holds.resize(self.holds.len() + more, None);
        self.busy.resize(self.busy.len() + more, None);
    }

    /// Whether a task of another of `task`'s sessions is out.
    pub(crate) fn held(&self, task: &Task) -> bool {
        task.session
            .as_ref()
            .is_some_and(|s| self.running.get(s).is_some_and(|&seq| seq != task.seq))
    }

    /// Whether no session has a task out (the common case: nothing to check).
    pub(crate) fn none_running(&self) -> bool {
        self.running.is_empty()
    }

    /// The agent whose process is in `session`.
    pub(crate) fn holder(&self, session: &str) -> Option<AgentIx> {
        self.holder.get(session).copied()
    }

    /// `task` was handed to agent `i`.
    pub(crate) fn mark(&mut self, i: AgentIx, task: &Task) {
        let seq = task.seq;
        if let Some(b) = self.busy.get_mut(i.0) {
            *b = Some(seq);
        }
        if let Some(s) = &task.session {
            self.running.insert(s.clone(), seq);
        }
        let held = self.holds.get(i.0).cloned().flatten();
        // Naming no session, or the one its process is in, it runs there.
        if task.session.is_none() || task.session == held {
            if let Some(h) = held {
                self.running.entry(h).or_insert(seq);
            }
        }
    }

    /// Agent `i`'s process is in `session` now.
    pub(crate) fn holds(&mut self, i: AgentIx, session: Option<String>) {
        let Some(slot) = self.holds.get_mut(i.0) else {
            return;
        };
        if let Some(old) = slot.take() {
            if self.holder.get(&old) == Some(&i) {
                self.holder.remove(&old);
            }
        }
        if let Some(s) = &session {
            self.holder.insert(s.clone(), i);
            // Its running task is of the session it moved to as well.
            if let Some(seq) = self.busy.get(i.0).copied().flatten() {
                self.running.entry(s.clone()).or_insert(seq);
            }
        }
        *slot = session;
    }

    /// Task `seq` is over (answered, or back in the queue): the sessions
    /// it marked, now free.
    pub(crate) fn unmark(&mut self, seq: u64) -> Vec<String> {
        for b in &mut self.busy {
            if *b == Some(seq) {
                *b = None;
            }
        }
        if self.running.is_empty() {
            return Vec::new();
        }
        let freed: Vec<String> = self
            .running
            .iter()
            .filter(|(_, v)| **v == seq)
            .map(|(k, _)| k.clone())
            .collect();
        for s in &freed {
            self.running.remove(s);
        }
        freed
    }

    /// Agent `i` is offered again (or down): it runs no task. What its
    /// last task marked stays marked until that task is answered (a retry
    /// waits in between, a stopped agent's process may still be ending it).
    pub(crate) fn idle(&mut self, i: AgentIx) {
        if let Some(b) = self.busy.get_mut(i.0) {
            *b = None;
        }
    }
}
