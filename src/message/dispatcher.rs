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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::message::demand::{self, AgentView, Consumers, Demand};
use crate::message::lent::Lent;
use crate::message::router::{AgentIx, Origin, Shown};

/// Where a task is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This agent.
    Agent(AgentIx),
    /// Any agent of this type.
    Type(String),
}

/// A task on its way to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub task_id: String,
    pub prompt: String,
    pub context: Option<Value>,
    pub priority: u8,
    pub timeout: Duration,
    pub deadline: Instant,
    pub target: Target,
    pub origin: Origin,
    pub submitted: Instant,
    /// Arrival order, set by the queue.
    pub seq: u64,
    /// How many times it has been run so far.
    pub attempts: u32,
    /// How many times a transient failure may be retried.
    pub retries: u32,
    /// Set for a task taken from the durable stream: how to acknowledge it.
    pub receipt: Option<Box<Receipt>>,
}

impl Task {
    /// `ID [trace T]`, for every log line about the task (see [`Shown`]).
    pub fn shown(&self) -> Shown<'_> {
        Shown(&self.task_id, self.origin.trace())
    }
}

/// A task taken from the durable stream: its delivery, to acknowledge once
/// its result is stored (or to give back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The JetStream acknowledgement subject of this delivery.
    pub ack: String,
    /// The task's sequence number in its stream.
    pub seq: u64,
    /// Which delivery this is (1 = the first).
    pub delivered: u32,
    /// The consumer it came through.
    pub consumer: usize,
}

/// The order of the heaps: a smaller priority number first, then the
/// earlier arrival. `BinaryHeap` is a max-heap, hence the `Reverse`s.
type Key = (Reverse<u8>, Reverse<u64>);

fn key(t: &Task) -> Key {
    (Reverse(t.priority), Reverse(t.seq))
}

/// Why a task was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Full {
        capacity: usize,
    },
    ShuttingDown,
    /// The agent (or every agent of the type) is terminated: a task would
    /// wait for nobody. `why` is the agent's reason.
    AgentDown {
        why: String,
    },
    /// A request with this `message_id` was accepted within the
    /// deduplication window; its answers go to its first sender.
    /// `same_sender`: this one came with the same reply subject (a retry
    /// or a replay), which needs no answer of its own.
    Duplicate {
        same_sender: bool,
    },
}

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

/// A fast hash for the queue's small keys (sequence numbers, agent indexes,
/// type names): the keys come from us, not from an attacker, so SipHash's
/// protection buys nothing and costs a third of the queue's time.
#[derive(Default, Clone, Copy)]
pub struct FastHash(u64);

impl std::hash::Hasher for FastHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Fast = std::hash::BuildHasherDefault<FastHash>;

/// The queue itself, without threads: what the dispatcher thread drives and
/// what the benchmark measures.
#[derive(Debug)]
pub struct Queue {
    capacity: usize,
    tasks: HashMap<u64, Task, Fast>,
    by_agent: HashMap<AgentIx, BinaryHeap<Key>, Fast>,
    by_type: HashMap<String, BinaryHeap<Key>, Fast>,
    /// Earliest deadline first; entries of tasks already gone are skipped
    /// (and compacted away when they pile up).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_seq: u64,
    /// Tasks queued per agent and per type (the heaps hold stale keys).
    count_agent: HashMap<AgentIx, usize, Fast>,
    count_type: HashMap<String, usize, Fast>,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            capacity,
            tasks: HashMap::with_capacity_and_hasher(capacity.min(65_536), Fast::default()),
            by_agent: HashMap::default(),
            by_type: HashMap::default(),
            deadlines: BinaryHeap::new(),
            next_seq: 0,
            count_agent: HashMap::default(),
            count_type: HashMap::default(),
        }
    }

    /// Tasks queued for agent `i` alone.
    pub fn queued_for_agent(&self, i: AgentIx) -> usize {
        self.count_agent.get(&i).copied().unwrap_or(0)
    }

    /// Tasks queued for any agent of type `t`.
    pub fn queued_for_type(&self, t: &str) -> usize {
        self.count_type.get(t).copied().unwrap_or(0)
    }

    fn count(&mut self, target: &Target, up: bool) {
        let n = match target {
            Target::Agent(i) => self.count_agent.entry(*i).or_default(),
            Target::Type(t) => match self.count_type.get_mut(t.as_str()) {
                Some(n) => n,
                None => self.count_type.entry(t.clone()).or_default(),
            },
        };
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }

    /// Takes task `seq` out of the map, keeping the counts.
    fn take(&mut self, seq: u64) -> Option<Task> {
        let t = self.tasks.remove(&seq)?;
        self.count(&t.target, false);
        Some(t)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Gives a new task its arrival number, unique for the queue's life.
    /// Every task is stamped, also one that goes straight to an idle agent:
    /// the supervisor tells tasks apart by it.
    pub fn stamp(&mut self, task: &mut Task) {
        self.next_seq += 1;
        task.seq = self.next_seq;
    }

    /// Adds a new task, or gives it back when the queue is full.
    pub fn push(&mut self, mut task: Task) -> Result<(), (Box<Task>, Refusal)> {
        if self.tasks.len() >= self.capacity {
            let capacity = self.capacity;
            return Err((Box::new(task), Refusal::Full { capacity }));
        }
        if task.seq == 0 {
            self.stamp(&mut task);
        }
        self.insert(task);
        Ok(())
    }

    /// Puts back a task an agent could not take; it keeps its place (its
    /// sequence number) and may exceed the capacity by the tasks in flight.
    pub fn requeue(&mut self, task: Task) {
        self.insert(task);
    }

    fn insert(&mut self, task: Task) {
        let k = key(&task);
        match &task.target {
            Target::Agent(i) => self.by_agent.entry(*i).or_default().push(k),
            Target::Type(t) => self.by_type.entry(t.clone()).or_default().push(k),
        }
        self.deadlines.push(Reverse((task.deadline, task.seq)));
        self.count(&task.target, true);
        self.tasks.insert(task.seq, task);
        if self.deadlines.len() > 2 * self.tasks.len() + 1024 {
            let tasks = &self.tasks;
            self.deadlines
                .retain(|Reverse((_, seq))| tasks.contains_key(seq));
        }
    }

    /// Takes the most urgent task for agent `agent` of type `agent_type`.
    pub fn pop_for(&mut self, agent: AgentIx, agent_type: &str) -> Option<Task> {
        let own = Self::head(&self.tasks, self.by_agent.get_mut(&agent));
        let typed = Self::head(&self.tasks, self.by_type.get_mut(agent_type));
        let take_own = match (own, typed) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => a >= b,
        };
        let heap = if take_own {
            self.by_agent.get_mut(&agent)
        } else {
            self.by_type.get_mut(agent_type)
        }?;
        let (_, Reverse(seq)) = heap.pop()?;
        self.take(seq)
    }

    /// The head key of `heap`, after dropping keys of tasks already gone.
    fn head(tasks: &HashMap<u64, Task, Fast>, heap: Option<&mut BinaryHeap<Key>>) -> Option<Key> {
        let heap = heap?;
        while let Some(&k) = heap.peek() {
            if tasks.contains_key(&(k.1).0) {
                return Some(k);
            }
            heap.pop();
        }
        None
    }

    /// The earliest deadline of a queued task.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, seq))) = self.deadlines.peek() {
            if self.tasks.contains_key(&seq) {
                return Some(t);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Removes and returns every task whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Task> {
        let mut out = Vec::new();
        while let Some(&Reverse((t, seq))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if let Some(task) = self.take(seq) {
                out.push(task);
            }
        }
        out
    }

    /// Removes and returns the tasks for which `pick` holds, in arrival
    /// order (their heap keys are skipped later).
    pub fn remove_where(&mut self, mut pick: impl FnMut(&Task) -> bool) -> Vec<Task> {
        let seqs: Vec<u64> = self
            .tasks
            .values()
            .filter(|t| pick(t))
            .map(|t| t.seq)
            .collect();
        let mut out: Vec<Task> = seqs.iter().filter_map(|s| self.take(*s)).collect();
        out.sort_by_key(|t| t.seq);
        out
    }

    /// Removes and returns every task (at shutdown).
    pub fn drain(&mut self) -> Vec<Task> {
        self.by_agent.clear();
        self.by_type.clear();
        self.deadlines.clear();
        self.count_agent.clear();
        self.count_type.clear();
        let mut all: Vec<Task> = self.tasks.drain().map(|(_, t)| t).collect();
        all.sort_by_key(|t| t.seq);
        all
    }
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
                    if let Some(i) = self.lent_for(&task.target) {
                        sink.accepted(&task, 0);
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
                if self.closed {
                    sink.cancelled(&task, Cancel::Shutdown);
                } else if let Some(why) = self.down_reason(&task.target) {
                    sink.cancelled(&task, Cancel::AgentDown { why });
                } else if let Some(i) = self.lent_for(&task.target) {
                    // Another idle agent that fits takes it now.
                    sink.assign(i, task);
                } else {
                    self.queue.requeue(task);
                }
            }
            DispatchCmd::Ready(i) if self.closed || i.0 >= self.types.len() => {}
            DispatchCmd::Ready(i) => {
                if let Some(task) = self.queue.pop_for(i, &self.types[i.0]) {
                    self.lent.take_back(i);
                    sink.assign(i, task);
                } else {
                    self.lent.lend(i);
                }
            }
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
