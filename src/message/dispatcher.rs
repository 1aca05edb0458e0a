//! The dispatcher: a bounded priority queue of tasks, drained into idle
//! agents.
//!
//! Tasks wait in `BinaryHeap`s keyed by (priority, arrival): priority 1
//! first, first-in first-out within a priority. A task addressed to one agent
//! waits in that agent's heap; a task for "any agent of type T" waits in T's
//! heap. When an agent becomes idle it takes the better of the heads of its
//! own heap and its type's heap, so neither kind starves the other.
//!
//! A task that waits past its deadline is answered `timeout` without ever
//! reaching an agent. Removal from a heap is lazy: the task leaves the
//! `tasks` map at once, and its stale key is skipped when it comes up.
//!
//! Everything here is pure: [`Dispatcher`] takes commands and the time and
//! tells a [`DispatchSink`] what to do. The thread that drives it is the
//! runtime's (`runtime::dispatch`).
//!
//! Which agents are idle is the supervisor's to know. It lends an agent to
//! the dispatcher when the agent becomes idle (`Ready`) and takes it back
//! when it leaves idle other than by taking a task (`NotReady`); the
//! dispatcher spends the loan when it hands the agent a task. The loan can
//! be stale by the time the task arrives (the agent was paused meanwhile):
//! the supervisor then hands the task back (`Requeue`), and it keeps its
//! place in the queue.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::message::demand::{self, AgentView, Consumers, Demand};
use crate::message::lent::Lent;
use crate::message::router::AgentIx;
use crate::message::sessions::Sessions;

use crate::message::queue::Fast;
pub use crate::message::queue::{FastHash, Queue, Receipt, Refusal, Target, Task};

/// How long a request's `message_id` is remembered: the same envelope
/// again within it is not run again (JetStream's default window).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// At most this many message ids are remembered (a flood of 50,000 tasks a
/// minute fits); past it the oldest are forgotten first.
const DEDUP_MAX: usize = 200_000;

/// Message ids seen lately, oldest first.
#[derive(Debug, Default)]
struct Recent {
    seen: HashMap<Uuid, Option<String>, Fast>,
    order: VecDeque<(Instant, Uuid)>,
}

impl Recent {
    /// The reply subject a request `id` came with, if it came within the
    /// window before `now`.
    fn check(&mut self, id: &Uuid, now: Instant) -> Option<&Option<String>> {
        while let Some(&(t, old)) = self.order.front() {
            if now.saturating_duration_since(t) < DEDUP_WINDOW && self.order.len() <= DEDUP_MAX {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        self.seen.get(id)
    }

    fn remember(&mut self, id: Uuid, reply: Option<String>, now: Instant) {
        if self.seen.insert(id, reply).is_none() {
            self.order.push_back((now, id));
        }
    }
}

/// Why a queued task is answered `cancelled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The daemon is shutting down.
    Shutdown,
    /// Its agent (or every agent of its type) was terminated.
    AgentDown { why: String },
}

/// Requests to the dispatcher.
#[derive(Debug)]
pub enum DispatchCmd {
    /// New tasks from one request: one, or one per agent of `--to all`.
    /// All of them are acknowledged before any is handed over, so that
    /// every acknowledgement goes out before the first result can.
    Submit(Vec<Task>),
    /// A task the supervisor could not start (the agent was no longer idle).
    Requeue(Box<Task>),
    /// The agent is idle and lent to the dispatcher for one task.
    Ready(AgentIx),
    /// The agent is no longer idle: the loan is taken back.
    NotReady(AgentIx),
    /// The agent is terminated (`why` says how): its queued tasks are
    /// cancelled and new ones refused until it is started again.
    Down(AgentIx, String),
    /// The agent was started again.
    Up(AgentIx),
    /// A reload added agents of these types, after the ones known.
    Grow(Vec<String>),
    /// Task `seq` was answered: another task of its claude session may
    /// run.
    Release(u64),
    /// The agent's process is in this claude session now (`None`: in none
    /// worth continuing): a task of the session goes to it when it is idle.
    Holds(AgentIx, Option<String>),
    /// Stop taking tasks; answer every queued one `cancelled`, then say
    /// [`DispatchSink::closed`].
    Shutdown,
}

/// What the dispatcher tells the rest of the daemon.
pub trait DispatchSink {
    /// Start `task` on agent `agent`.
    fn assign(&self, agent: AgentIx, task: Task);
    /// The task is queued (`position` tasks are queued in all).
    fn accepted(&self, task: &Task, position: usize);
    /// The task was refused.
    fn refused(&self, task: &Task, why: Refusal);
    /// The task waited past its deadline.
    fn expired(&self, task: &Task);
    /// The task was dropped before it ran.
    fn cancelled(&self, task: &Task, why: Cancel);
    /// The dispatcher has shut down: everything it assigned was said
    /// before this.
    fn closed(&self);
}

/// The dispatcher's state: the queue and the agents lent to it. `types[i]`
/// is agent `i`'s type.
#[derive(Debug)]
pub struct Dispatcher {
    queue: Queue,
    lent: Lent,
    types: Vec<String>,
    /// The reason of each terminated agent.
    down: Vec<Option<String>>,
    recent: Recent,
    closed: bool,
    /// Durable mode: the stream's consumers and what came from each.
    durable: Option<Durable>,
    /// Claude sessions: which have a task out, which agent holds which.
    sessions: Sessions,
}

#[derive(Debug)]
struct Durable {
    consumers: Consumers,
    /// Each agent's type, as a position in `consumers.types`.
    type_of: Vec<Option<usize>>,
    received: Vec<u64>,
}

impl Dispatcher {
    pub fn new(capacity: usize, types: Vec<String>) -> Dispatcher {
        Dispatcher {
            queue: Queue::new(capacity),
            lent: Lent::new(&types),
            down: vec![None; types.len()],
            sessions: Sessions::new(types.len()),
            recent: Recent::default(),
            types,
            closed: false,
            durable: None,
        }
    }

    /// Durable mode: tasks come from these consumers, which [`demand`]
    /// says how much to ask of.
    ///
    /// [`demand`]: Dispatcher::demand
    pub fn with_consumers(mut self, consumers: Consumers) -> Dispatcher {
        let type_of = self
            .types
            .iter()
            .map(|t| consumers.types.iter().position(|(name, _)| name == t))
            .collect();
        self.durable = Some(Durable {
            received: vec![0; consumers.count],
            consumers,
            type_of,
        });
        self
    }

    /// A lent agent for `target`, now taken back.
    fn lent_for(&mut self, target: &Target) -> Option<AgentIx> {
        match target {
            Target::Agent(i) => self.lent.take_for(Some(*i), ""),
            Target::Type(t) => self.lent.take_for(None, t),
        }
    }

    /// A lent agent for `task`, now taken back: for a task that continues a
    /// session, the agent whose process is in it, if that one is lent.
    fn lent_for_task(&mut self, task: &Task) -> Option<AgentIx> {
        if let Some(h) = task.session.as_ref().and_then(|s| self.sessions.holder(s)) {
            let fits = match &task.target {
                Target::Agent(i) => *i == h,
                Target::Type(t) => self.types.get(h.0) == Some(t),
            };
            if fits {
                if let Some(i) = self.lent.take_for(Some(h), "") {
                    return Some(i);
                }
            }
        }
        self.lent_for(&task.target)
    }

    /// Hands `task` to agent `i`, marking the sessions it runs in.
    fn start(&mut self, i: AgentIx, task: Task, sink: &dyn DispatchSink) {
        self.sessions.mark(i, &task);
        sink.assign(i, task);
    }

    /// The tasks of `freed` sessions that waited for the ones before them,
    /// each to a lent agent if one fits.
    fn after(&mut self, freed: Vec<String>, sink: &dyn DispatchSink) {
        for s in freed {
            self.next_of_session(&s, sink);
        }
    }

    /// A task of `session` that waited for the one before it, to a lent
    /// agent if one fits.
    fn next_of_session(&mut self, session: &str, sink: &dyn DispatchSink) {
        if self.closed {
            return;
        }
        let Some(t) = self.queue.first_of_session(session) else {
            return;
        };
        let probe = Task {
            prompt: String::new(),
            context: None,
            receipt: None,
            ..t.clone()
        };
        if self.sessions.held(&probe) {
            return;
        }
        if let Some(i) = self.lent_for_task(&probe) {
            if let Some(task) = self.queue.take_seq(probe.seq) {
                self.start(i, task, sink);
            }
        }
    }

    /// In durable mode, what to ask each consumer for now.
    pub fn demand(&self) -> Option<Demand> {
        let d = self.durable.as_ref()?;
        if self.closed {
            return Some(Demand {
                wanted: vec![0; d.consumers.count],
                received: d.received.clone(),
            });
        }
        let agents: Vec<AgentView> = (0..self.types.len())
            .map(|i| AgentView {
                idle: self.lent.lent[i],
                down: self.down[i].is_some(),
                queued: self.queue.queued_for_agent(AgentIx(i)),
            })
            .collect();
        let type_queued: Vec<usize> = d
            .consumers
            .types
            .iter()
            .map(|(t, _)| self.queue.queued_for_type(t))
            .collect();
        Some(Demand {
            wanted: demand::wanted(&d.consumers, &agents, &d.type_of, &type_queued),
            received: d.received.clone(),
        })
    }

    /// Tasks waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the next queued task runs out of time.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.queue.next_deadline()
    }

    /// Answers `timeout` for every task whose deadline is at or before
    /// `now`.
    pub fn expire(&mut self, now: Instant, sink: &dyn DispatchSink) {
        for t in self.queue.expire(now) {
            sink.expired(&t);
        }
    }

    /// Why `target` can take no task at all: its agent, or every agent of
    /// its type, is terminated.
    fn down_reason(&self, target: &Target) -> Option<String> {
        match target {
            Target::Agent(i) => self.down.get(i.0).cloned().flatten(),
            Target::Type(t) => {
                let mut of_type = self
                    .types
                    .iter()
                    .zip(&self.down)
                    .filter(|(ty, _)| *ty == t)
                    .peekable();
                of_type.peek()?;
                let mut why = None;
                for (_, down) in of_type {
                    why = Some(down.clone()?);
                }
                why.map(|w| format!("every agent of type {t} is terminated (the last: {w})"))
            }
        }
    }

    pub fn handle(&mut self, cmd: DispatchCmd, sink: &dyn DispatchSink) {
        match cmd {
            DispatchCmd::Submit(tasks) if self.closed => {
                if let Some(d) = &mut self.durable {
                    for r in tasks.iter().filter_map(|t| t.receipt.as_ref()) {
                        if let Some(n) = d.received.get_mut(r.consumer) {
                            *n += 1;
                        }
                    }
                }
                for task in &tasks {
                    sink.refused(task, Refusal::ShuttingDown);
                }
            }
            DispatchCmd::Submit(tasks) => {
                // A task from the stream was stored once (the stream keeps
                // message ids) and may come again only as a redelivery,
                // which must run.
                let mut from_stream = false;
                if let Some(d) = &mut self.durable {
                    for t in &tasks {
                        if let Some(r) = &t.receipt {
                            if let Some(n) = d.received.get_mut(r.consumer) {
                                *n += 1;
                            }
                            from_stream = true;
                        }
                    }
                }
                // One request (one message id), whatever the number of its
                // tasks: the same envelope again within the window is not
                // run again.
                let request = tasks
                    .first()
                    .filter(|_| !from_stream)
                    .and_then(|t| Some((t.origin.message_id?, t.submitted)));
                if let Some((id, at)) = request {
                    if let Some(first_reply) = self.recent.check(&id, at) {
                        let same_sender = *first_reply == tasks[0].origin.reply_to;
                        for task in &tasks {
                            sink.refused(task, Refusal::Duplicate { same_sender });
                        }
                        return;
                    }
                }
                let reply = tasks.first().and_then(|t| t.origin.reply_to.clone());
                let mut taken = false;
                let mut start = Vec::new();
                for mut task in tasks {
                    if let Some(why) = self.down_reason(&task.target) {
                        sink.refused(&task, Refusal::AgentDown { why });
                        continue;
                    }
                    self.queue.stamp(&mut task);
                    let free = !self.sessions.held(&task);
                    if let Some(i) = free.then(|| self.lent_for_task(&task)).flatten() {
                        sink.accepted(&task, 0);
                        self.sessions.mark(i, &task);
                        start.push((i, task));
                        taken = true;
                    } else {
                        let seq = task.seq;
                        match self.queue.push(task) {
                            Ok(()) => {
                                if let Some(t) = self.queue.tasks.get(&seq) {
                                    sink.accepted(t, self.queue.len());
                                }
                                taken = true;
                            }
                            Err((task, why)) => sink.refused(&task, why),
                        }
                    }
                }
                // Remembered once taken: a request refused (queue full) may
                // be sent again as it was.
                if let (true, Some((id, at))) = (taken, request) {
                    self.recent.remember(id, reply, at);
                }
                for (i, task) in start {
                    sink.assign(i, task);
                }
            }
            DispatchCmd::Requeue(task) => {
                let task = *task;
                // Back from its agent: what it marked is free.
                let freed = self.sessions.unmark(task.seq);
                if self.closed {
                    sink.cancelled(&task, Cancel::Shutdown);
                } else if let Some(why) = self.down_reason(&task.target) {
                    sink.cancelled(&task, Cancel::AgentDown { why });
                } else if self.sessions.held(&task) {
                    self.queue.requeue(task);
                } else if let Some(i) = self.lent_for_task(&task) {
                    // Another idle agent that fits takes it now.
                    self.start(i, task, sink);
                } else {
                    self.queue.requeue(task);
                }
                self.after(freed, sink);
            }
            DispatchCmd::Ready(i) if self.closed || i.0 >= self.types.len() => {}
            DispatchCmd::Ready(i) => {
                self.sessions.idle(i);
                let sessions = &self.sessions;
                let popped = if sessions.none_running() {
                    self.queue.pop_for(i, &self.types[i.0])
                } else {
                    self.queue
                        .pop_unless(i, &self.types[i.0], |t| sessions.held(t))
                };
                if let Some(task) = popped {
                    self.lent.take_back(i);
                    self.start(i, task, sink);
                } else {
                    self.lent.lend(i);
                }
            }
            DispatchCmd::Release(seq) => {
                let freed = self.sessions.unmark(seq);
                self.after(freed, sink);
            }
            DispatchCmd::Holds(i, session) => self.sessions.holds(i, session),
            DispatchCmd::NotReady(i) => self.lent.take_back(i),
            DispatchCmd::Down(i, why) => {
                let Some(slot) = self.down.get_mut(i.0) else {
                    return;
                };
                *slot = Some(why);
                self.lent.take_back(i);
                let agent_type = self.types[i.0].clone();
                let type_down = self.down_reason(&Target::Type(agent_type.clone()));
                let gone = self.queue.remove_where(|t| match &t.target {
                    Target::Agent(a) => *a == i,
                    Target::Type(ty) => type_down.is_some() && *ty == agent_type,
                });
                for t in gone {
                    if let Some(why) = self.down_reason(&t.target) {
                        sink.cancelled(&t, Cancel::AgentDown { why });
                    }
                }
                self.sessions.idle(i);
            }
            DispatchCmd::Grow(types) => {
                self.lent.grow(&types);
                self.down.resize(self.down.len() + types.len(), None);
                self.sessions.grow(types.len());
                if let Some(d) = &mut self.durable {
                    let known = &d.consumers.types;
                    d.type_of.extend(
                        types
                            .iter()
                            .map(|t| known.iter().position(|(name, _)| name == t)),
                    );
                }
                self.types.extend(types);
            }
            DispatchCmd::Up(i) => {
                if let Some(slot) = self.down.get_mut(i.0) {
                    *slot = None;
                }
            }
            DispatchCmd::Shutdown => {
                if !self.closed {
                    self.closed = true;
                    for t in self.queue.drain() {
                        sink.cancelled(&t, Cancel::Shutdown);
                    }
                }
                sink.closed();
            }
        }
    }
}

#[cfg(test)]
#[path = "dispatcher_tests.rs"]
mod tests;
