//! Tasks, and the queue itself: tasks in `BinaryHeap`s keyed by (priority,
//! arrival), one heap per agent and one per type, with lazy removal and
//! deadlines (see the dispatcher for how it is drained).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use std::time::Duration;

use serde_json::Value;

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
    /// The claude session it continues: no other task of the session runs
    /// while it does.
    pub session: Option<String>,
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

/// The order of the heaps: a smaller priority number first, then the
/// earlier arrival. `BinaryHeap` is a max-heap, hence the `Reverse`s.
type Key = (Reverse<u8>, Reverse<u64>);

fn key(t: &Task) -> Key {
    (Reverse(t.priority), Reverse(t.seq))
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

pub(crate) type Fast = std::hash::BuildHasherDefault<FastHash>;

/// The queue itself, without threads: what the dispatcher thread drives and
/// what the benchmark measures.
#[derive(Debug)]
pub struct Queue {
    capacity: usize,
    pub(crate) tasks: HashMap<u64, Task, Fast>,
    by_agent: HashMap<AgentIx, BinaryHeap<Key>, Fast>,
    by_type: HashMap<String, BinaryHeap<Key>, Fast>,
    /// Earliest deadline first; entries of tasks already gone are skipped
    /// (and compacted away when they pile up).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_seq: u64,
    /// Tasks queued per agent and per type (the heaps hold stale keys).
    count_agent: HashMap<AgentIx, usize, Fast>,
    count_type: HashMap<String, usize, Fast>,
    /// Tasks queued per claude session (of tasks that continue one).
    sessions: HashMap<String, usize>,
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
            sessions: HashMap::new(),
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

    fn count(&mut self, target: &Target, session: Option<&String>, up: bool) {
        if let Some(s) = session {
            if up {
                *self.sessions.entry(s.clone()).or_default() += 1;
            } else if let Some(n) = self.sessions.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.sessions.remove(s);
                }
            }
        }
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
        self.count(&t.target, t.session.as_ref(), false);
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
        self.count(&task.target, task.session.as_ref(), true);
        self.tasks.insert(task.seq, task);
        if self.deadlines.len() > 2 * self.tasks.len() + 1024 {
            let tasks = &self.tasks;
            self.deadlines
                .retain(|Reverse((_, seq))| tasks.contains_key(seq));
        }
    }

    /// Takes the most urgent task for agent `agent` of type `agent_type`.
    pub fn pop_for(&mut self, agent: AgentIx, agent_type: &str) -> Option<Task> {
        self.pop_unless(agent, agent_type, |_| false)
    }

    /// Takes the most urgent task for agent `agent` of type `agent_type`
    /// that is not `held` (a task of a session that is running): a held
    /// task keeps its place, and its deadline runs on.
    pub fn pop_unless(
        &mut self,
        agent: AgentIx,
        agent_type: &str,
        held: impl Fn(&Task) -> bool,
    ) -> Option<Task> {
        let mut set_aside = (Vec::new(), Vec::new());
        let own = Self::head(
            &self.tasks,
            self.by_agent.get_mut(&agent),
            &held,
            &mut set_aside.0,
        );
        let typed = Self::head(
            &self.tasks,
            self.by_type.get_mut(agent_type),
            &held,
            &mut set_aside.1,
        );
        let take_own = match (own, typed) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(a), Some(b)) => Some(a >= b),
        };
        let seq = take_own.and_then(|own| {
            let heap = if own {
                self.by_agent.get_mut(&agent)
            } else {
                self.by_type.get_mut(agent_type)
            }?;
            heap.pop().map(|(_, Reverse(seq))| seq)
        });
        if !set_aside.0.is_empty() {
            if let Some(h) = self.by_agent.get_mut(&agent) {
                h.extend(set_aside.0);
            }
        }
        if !set_aside.1.is_empty() {
            if let Some(h) = self.by_type.get_mut(agent_type) {
                h.extend(set_aside.1);
            }
        }
        self.take(seq?)
    }

    /// The head key of `heap` that is not `held`, after dropping keys of
    /// tasks already gone; the keys of held tasks are moved to `set_aside`
    /// (to go back once the pick is made).
    fn head(
        tasks: &HashMap<u64, Task, Fast>,
        heap: Option<&mut BinaryHeap<Key>>,
        held: &impl Fn(&Task) -> bool,
        set_aside: &mut Vec<Key>,
    ) -> Option<Key> {
        let heap = heap?;
        while let Some(&k) = heap.peek() {
            match tasks.get(&(k.1).0) {
                Some(t) if held(t) => set_aside.push(k),
                Some(_) => return Some(k),
                None => {}
            }
            heap.pop();
        }
        None
    }

    /// The most urgent queued task of session `session`, if any.
    pub fn first_of_session(&self, session: &str) -> Option<&Task> {
        if !self.sessions.contains_key(session) {
            return None;
        }
        self.tasks
            .values()
            .filter(|t| t.session.as_deref() == Some(session))
            .max_by_key(|t| key(t))
    }

    /// Takes task `seq` out of the queue (its heap key is skipped later).
    pub fn take_seq(&mut self, seq: u64) -> Option<Task> {
        self.take(seq)
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
        self.sessions.clear();
        let mut all: Vec<Task> = self.tasks.drain().map(|(_, t)| t).collect();
        all.sort_by_key(|t| t.seq);
        all
    }
}
