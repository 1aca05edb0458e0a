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

use crate::message::router::{AgentIx, Origin};

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
    Full { capacity: usize },
    ShuttingDown,
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
        }
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
        self.tasks.remove(&seq)
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
            if let Some(task) = self.tasks.remove(&seq) {
                out.push(task);
            }
        }
        out
    }

    /// Removes and returns every task (at shutdown).
    pub fn drain(&mut self) -> Vec<Task> {
        self.by_agent.clear();
        self.by_type.clear();
        self.deadlines.clear();
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
    /// The task was dropped at shutdown.
    fn cancelled(&self, task: &Task);
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
    closed: bool,
}

impl Dispatcher {
    pub fn new(capacity: usize, types: Vec<String>) -> Dispatcher {
        Dispatcher {
            queue: Queue::new(capacity),
            lent: Lent::new(&types),
            types,
            closed: false,
        }
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

    pub fn handle(&mut self, cmd: DispatchCmd, sink: &dyn DispatchSink) {
        match cmd {
            DispatchCmd::Submit(tasks) if self.closed => {
                for task in &tasks {
                    sink.refused(task, Refusal::ShuttingDown);
                }
            }
            DispatchCmd::Submit(tasks) => {
                let mut start = Vec::new();
                for mut task in tasks {
                    self.queue.stamp(&mut task);
                    if let Some(i) = self.lent.take_for(&task.target) {
                        sink.accepted(&task, 0);
                        start.push((i, task));
                    } else {
                        let seq = task.seq;
                        match self.queue.push(task) {
                            Ok(()) => {
                                if let Some(t) = self.queue.tasks.get(&seq) {
                                    sink.accepted(t, self.queue.len());
                                }
                            }
                            Err((task, why)) => sink.refused(&task, why),
                        }
                    }
                }
                for (i, task) in start {
                    sink.assign(i, task);
                }
            }
            DispatchCmd::Requeue(task) => {
                let task = *task;
                if self.closed {
                    sink.cancelled(&task);
                } else if let Some(i) = self.lent.take_for(&task.target) {
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
            DispatchCmd::Shutdown => {
                if !self.closed {
                    self.closed = true;
                    for t in self.queue.drain() {
                        sink.cancelled(&t);
                    }
                }
                sink.closed();
            }
        }
    }
}

/// The agents lent to the dispatcher (idle ones): a flag per agent, and per
/// type the lent ones in the order they were lent, so work is spread over
/// them. An agent is in its type's list at most once.
#[derive(Debug)]
struct Lent {
    types: Vec<String>,
    lent: Vec<bool>,
    listed: Vec<bool>,
    by_type: HashMap<String, VecDeque<AgentIx>>,
}

impl Lent {
    fn new(types: &[String]) -> Self {
        Lent {
            types: types.to_vec(),
            lent: vec![false; types.len()],
            listed: vec![false; types.len()],
            by_type: HashMap::new(),
        }
    }

    fn lend(&mut self, i: AgentIx) {
        self.lent[i.0] = true;
        if !self.listed[i.0] {
            self.listed[i.0] = true;
            self.by_type
                .entry(self.types[i.0].clone())
                .or_default()
                .push_back(i);
        }
    }

    fn take_back(&mut self, i: AgentIx) {
        if let Some(f) = self.lent.get_mut(i.0) {
            *f = false;
        }
    }

    /// A lent agent for `target`, now taken back.
    fn take_for(&mut self, target: &Target) -> Option<AgentIx> {
        let i = match target {
            Target::Agent(i) => self.lent.get(i.0).copied().unwrap_or(false).then_some(*i),
            Target::Type(t) => {
                let q = self.by_type.get_mut(t.as_str())?;
                let mut found = None;
                while let Some(i) = q.pop_front() {
                    self.listed[i.0] = false;
                    if self.lent[i.0] {
                        found = Some(i);
                        break;
                    }
                }
                found
            }
        }?;
        self.lent[i.0] = false;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn task(id: &str, priority: u8, target: Target) -> Task {
        let now = Instant::now();
        Task {
            task_id: id.into(),
            prompt: "p".into(),
            context: None,
            priority,
            timeout: Duration::from_secs(60),
            deadline: now + Duration::from_secs(60),
            target,
            origin: Origin::default(),
            submitted: now,
            seq: 0,
        }
    }

    #[test]
    fn priority_first_then_arrival_order() {
        let mut q = Queue::new(100);
        for (id, p) in [
            ("a5", 5),
            ("b1", 1),
            ("c5", 5),
            ("d10", 10),
            ("e1", 1),
            ("f5", 5),
        ] {
            q.push(task(id, p, Target::Agent(AgentIx(0)))).unwrap();
        }
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop_for(AgentIx(0), "claude").map(|t| t.task_id)).collect();
        assert_eq!(order, ["b1", "e1", "a5", "c5", "f5", "d10"]);
    }

    #[test]
    fn an_agent_takes_the_better_of_its_own_and_its_types_heads() {
        let mut q = Queue::new(100);
        q.push(task("own5", 5, Target::Agent(AgentIx(0)))).unwrap();
        q.push(task("any5", 5, Target::Type("claude".into())))
            .unwrap();
        q.push(task("any2", 2, Target::Type("claude".into())))
            .unwrap();
        q.push(task("other", 1, Target::Agent(AgentIx(1)))).unwrap();
        q.push(task("shell", 1, Target::Type("shell".into())))
            .unwrap();
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop_for(AgentIx(0), "claude").map(|t| t.task_id)).collect();
        assert_eq!(order, ["any2", "own5", "any5"]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_full_queue_refuses_and_requeues_keep_their_place() {
        let mut q = Queue::new(2);
        q.push(task("a", 5, Target::Agent(AgentIx(0)))).unwrap();
        q.push(task("b", 5, Target::Agent(AgentIx(0)))).unwrap();
        let (t, why) = q.push(task("c", 5, Target::Agent(AgentIx(0)))).unwrap_err();
        assert_eq!(
            (t.task_id.as_str(), why),
            ("c", Refusal::Full { capacity: 2 })
        );
        let a = q.pop_for(AgentIx(0), "x").unwrap();
        q.requeue(a);
        assert_eq!(q.pop_for(AgentIx(0), "x").unwrap().task_id, "a");
    }

    #[test]
    fn expired_tasks_leave_and_are_skipped() {
        let mut q = Queue::new(10);
        let mut soon = task("soon", 1, Target::Agent(AgentIx(0)));
        soon.deadline = Instant::now();
        q.push(soon).unwrap();
        q.push(task("later", 5, Target::Agent(AgentIx(0)))).unwrap();
        let gone: Vec<_> = q
            .expire(Instant::now())
            .into_iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(gone, ["soon"]);
        assert_eq!(q.pop_for(AgentIx(0), "x").unwrap().task_id, "later");
        assert!(q.pop_for(AgentIx(0), "x").is_none());
        assert!(q.is_empty());
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl DispatchSink for Log {
        fn assign(&self, agent: AgentIx, task: Task) {
            self.0
                .lock()
                .unwrap()
                .push(format!("assign {} {}", agent.0, task.task_id));
        }
        fn accepted(&self, task: &Task, position: usize) {
            self.0
                .lock()
                .unwrap()
                .push(format!("accepted {} {position}", task.task_id));
        }
        fn refused(&self, task: &Task, why: Refusal) {
            self.0
                .lock()
                .unwrap()
                .push(format!("refused {} {why:?}", task.task_id));
        }
        fn expired(&self, task: &Task) {
            self.0
                .lock()
                .unwrap()
                .push(format!("expired {}", task.task_id));
        }
        fn cancelled(&self, task: &Task) {
            self.0
                .lock()
                .unwrap()
                .push(format!("cancelled {}", task.task_id));
        }
        fn closed(&self) {
            self.0.lock().unwrap().push("closed".into());
        }
    }

    #[test]
    fn the_dispatcher_hands_tasks_to_idle_agents() {
        let log = Log::default();
        let types = vec!["claude".to_string(), "claude".to_string()];
        let mut d = Dispatcher::new(1, types);
        let cmds = [
            DispatchCmd::Ready(AgentIx(1)),
            DispatchCmd::Submit(vec![task("t1", 5, Target::Type("claude".into()))]),
            DispatchCmd::Submit(vec![task("t2", 5, Target::Agent(AgentIx(0)))]),
            DispatchCmd::Submit(vec![task("t3", 5, Target::Agent(AgentIx(0)))]),
            DispatchCmd::Ready(AgentIx(0)),
            DispatchCmd::Submit(vec![task("t4", 5, Target::Agent(AgentIx(1)))]),
            DispatchCmd::Shutdown,
            DispatchCmd::Submit(vec![task("t5", 5, Target::Agent(AgentIx(1)))]),
        ];
        for cmd in cmds {
            d.handle(cmd, &log);
        }
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                "accepted t1 0",
                "assign 1 t1",
                "accepted t2 1",
                "refused t3 Full { capacity: 1 }",
                "assign 0 t2",
                "accepted t4 1",
                "cancelled t4",
                "closed",
                "refused t5 ShuttingDown",
            ]
        );
        assert_eq!(d.queued(), 0);
    }

    /// `--to all`: every task of the request is acknowledged before the
    /// first is handed over, so no result can overtake an acknowledgement.
    #[test]
    fn a_request_for_several_agents_is_acknowledged_before_it_starts() {
        let log = Log::default();
        let types = vec!["claude".to_string(), "claude".to_string()];
        let mut d = Dispatcher::new(10, types);
        d.handle(DispatchCmd::Ready(AgentIx(0)), &log);
        d.handle(DispatchCmd::Ready(AgentIx(1)), &log);
        d.handle(
            DispatchCmd::Submit(vec![
                task("a", 5, Target::Agent(AgentIx(0))),
                task("b", 5, Target::Agent(AgentIx(1))),
            ]),
            &log,
        );
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got,
            ["accepted a 0", "accepted b 0", "assign 0 a", "assign 1 b"]
        );
    }

    #[test]
    fn queued_tasks_expire_at_their_deadline() {
        let log = Log::default();
        let mut d = Dispatcher::new(10, vec!["claude".to_string()]);
        let mut soon = task("soon", 5, Target::Agent(AgentIx(0)));
        let t0 = soon.submitted;
        soon.deadline = t0 + Duration::from_millis(10);
        d.handle(DispatchCmd::Submit(vec![soon]), &log);
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_millis(10)));
        d.expire(t0 + Duration::from_millis(9), &log);
        d.expire(t0 + Duration::from_millis(10), &log);
        assert_eq!(d.next_deadline(), None);
        let got = log.0.lock().unwrap().clone();
        assert_eq!(got, ["accepted soon 1", "expired soon"]);
    }
}
