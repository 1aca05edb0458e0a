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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, Receiver};
use serde_json::Value;
use uuid::Uuid;

/// Where a task is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The agent with this index.
    Agent(usize),
    /// Any agent of this type.
    Type(String),
}

/// What the sender needs in the answers to a task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    /// The subject replies go to, if the sender asked for them.
    pub reply_to: Option<String>,
    /// Copied into every answer: the request's `correlation_id`, or else its
    /// `message_id`.
    pub correlation_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub source_agent_id: Option<String>,
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
    by_agent: HashMap<usize, BinaryHeap<Key>, Fast>,
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
    pub fn pop_for(&mut self, agent: usize, agent_type: &str) -> Option<Task> {
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

/// Requests to the dispatcher thread.
#[derive(Debug)]
pub enum DispatchCmd {
    /// New tasks from one request: one, or one per agent of `--to all`.
    /// All of them are acknowledged before any is handed over, so that
    /// every acknowledgement goes out before the first result can.
    Submit(Vec<Task>),
    /// A task the supervisor could not start (the agent was no longer idle).
    Requeue(Box<Task>),
    /// Agent `usize` is idle and can take a task.
    Ready(usize),
    /// Agent `usize` is no longer idle.
    NotReady(usize),
    /// Stop taking tasks; answer every queued one `cancelled`. The sender
    /// is dropped once done, so every assignment made before is already on
    /// its way to the supervisor.
    Shutdown(crossbeam_channel::Sender<()>),
}

/// What the dispatcher tells the rest of the daemon.
pub trait DispatchSink {
    /// Start `task` on agent `agent`.
    fn assign(&self, agent: usize, task: Task);
    /// The task is queued (`position` tasks are queued in all).
    fn accepted(&self, task: &Task, position: usize);
    /// The task was refused.
    fn refused(&self, task: &Task, why: Refusal);
    /// The task waited past its deadline.
    fn expired(&self, task: &Task);
    /// The task was dropped at shutdown.
    fn cancelled(&self, task: &Task);
}

/// The dispatcher thread's loop. `agent_types[i]` is agent `i`'s type;
/// `queued` mirrors the queue length for status reports.
pub fn run(
    inbox: &Receiver<DispatchCmd>,
    capacity: usize,
    agent_types: &[String],
    queued: &Arc<AtomicUsize>,
    sink: &dyn DispatchSink,
) {
    let mut queue = Queue::new(capacity);
    let mut idle = Idle::new(agent_types);
    let mut closed = false;
    loop {
        let timer = queue.next_deadline().map_or_else(never, at);
        select_biased! {
            recv(inbox) -> cmd => {
                let Ok(cmd) = cmd else { return };
                match cmd {
                    DispatchCmd::Submit(tasks) if closed => {
                        for task in &tasks {
                            sink.refused(task, Refusal::ShuttingDown);
                        }
                    }
                    DispatchCmd::Submit(tasks) => {
                        let mut start = Vec::new();
                        for mut task in tasks {
                            queue.stamp(&mut task);
                            if let Some(i) = idle.take_for(&task.target) {
                                sink.accepted(&task, 0);
                                start.push((i, task));
                            } else {
                                let seq = task.seq;
                                match queue.push(task) {
                                    Ok(()) => {
                                        if let Some(t) = queue.tasks.get(&seq) {
                                            sink.accepted(t, queue.len());
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
                        if closed {
                            sink.cancelled(&task);
                        } else if let Some(i) = idle.take_for(&task.target) {
                            // Another idle agent that fits takes it now.
                            sink.assign(i, task);
                        } else {
                            queue.requeue(task);
                        }
                    }
                    DispatchCmd::Ready(i) if closed || i >= agent_types.len() => {}
                    DispatchCmd::Ready(i) => {
                        if let Some(task) = queue.pop_for(i, &agent_types[i]) {
                            idle.set_busy(i);
                            sink.assign(i, task);
                        } else {
                            idle.set_idle(i);
                        }
                    }
                    DispatchCmd::NotReady(i) => idle.set_busy(i),
                    DispatchCmd::Shutdown(done) => {
                        closed = true;
                        for t in queue.drain() {
                            sink.cancelled(&t);
                        }
                        drop(done);
                    }
                }
            },
            recv(timer) -> _ => {
                for t in queue.expire(Instant::now()) {
                    sink.expired(&t);
                }
            },
        }
        queued.store(queue.len(), Ordering::Relaxed);
    }
}

/// Which agents are idle: a flag per agent, and per type the idle ones in
/// the order they became idle, so work is spread over them. An agent is in
/// its type's list at most once.
struct Idle<'a> {
    types: &'a [String],
    idle: Vec<bool>,
    listed: Vec<bool>,
    by_type: HashMap<&'a str, VecDeque<usize>>,
}

impl<'a> Idle<'a> {
    fn new(types: &'a [String]) -> Self {
        Idle {
            types,
            idle: vec![false; types.len()],
            listed: vec![false; types.len()],
            by_type: HashMap::new(),
        }
    }

    fn set_idle(&mut self, i: usize) {
        self.idle[i] = true;
        if !self.listed[i] {
            self.listed[i] = true;
            self.by_type
                .entry(self.types[i].as_str())
                .or_default()
                .push_back(i);
        }
    }

    fn set_busy(&mut self, i: usize) {
        if let Some(f) = self.idle.get_mut(i) {
            *f = false;
        }
    }

    /// An idle agent for `target`, now marked busy.
    fn take_for(&mut self, target: &Target) -> Option<usize> {
        let i = match target {
            Target::Agent(i) => self.idle.get(*i).copied().unwrap_or(false).then_some(*i),
            Target::Type(t) => {
                let q = self.by_type.get_mut(t.as_str())?;
                let mut found = None;
                while let Some(i) = q.pop_front() {
                    self.listed[i] = false;
                    if self.idle[i] {
                        found = Some(i);
                        break;
                    }
                }
                found
            }
        }?;
        self.idle[i] = false;
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
            q.push(task(id, p, Target::Agent(0))).unwrap();
        }
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop_for(0, "claude").map(|t| t.task_id)).collect();
        assert_eq!(order, ["b1", "e1", "a5", "c5", "f5", "d10"]);
    }

    #[test]
    fn an_agent_takes_the_better_of_its_own_and_its_types_heads() {
        let mut q = Queue::new(100);
        q.push(task("own5", 5, Target::Agent(0))).unwrap();
        q.push(task("any5", 5, Target::Type("claude".into())))
            .unwrap();
        q.push(task("any2", 2, Target::Type("claude".into())))
            .unwrap();
        q.push(task("other", 1, Target::Agent(1))).unwrap();
        q.push(task("shell", 1, Target::Type("shell".into())))
            .unwrap();
        let order: Vec<String> =
            std::iter::from_fn(|| q.pop_for(0, "claude").map(|t| t.task_id)).collect();
        assert_eq!(order, ["any2", "own5", "any5"]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_full_queue_refuses_and_requeues_keep_their_place() {
        let mut q = Queue::new(2);
        q.push(task("a", 5, Target::Agent(0))).unwrap();
        q.push(task("b", 5, Target::Agent(0))).unwrap();
        let (t, why) = q.push(task("c", 5, Target::Agent(0))).unwrap_err();
        assert_eq!(
            (t.task_id.as_str(), why),
            ("c", Refusal::Full { capacity: 2 })
        );
        let a = q.pop_for(0, "x").unwrap();
        q.requeue(a);
        assert_eq!(q.pop_for(0, "x").unwrap().task_id, "a");
    }

    #[test]
    fn expired_tasks_leave_and_are_skipped() {
        let mut q = Queue::new(10);
        let mut soon = task("soon", 1, Target::Agent(0));
        soon.deadline = Instant::now();
        q.push(soon).unwrap();
        q.push(task("later", 5, Target::Agent(0))).unwrap();
        let gone: Vec<_> = q
            .expire(Instant::now())
            .into_iter()
            .map(|t| t.task_id)
            .collect();
        assert_eq!(gone, ["soon"]);
        assert_eq!(q.pop_for(0, "x").unwrap().task_id, "later");
        assert!(q.pop_for(0, "x").is_none());
        assert!(q.is_empty());
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl DispatchSink for Log {
        fn assign(&self, agent: usize, task: Task) {
            self.0
                .lock()
                .unwrap()
                .push(format!("assign {agent} {}", task.task_id));
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
    }

    #[test]
    fn the_thread_hands_tasks_to_idle_agents() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let log = Arc::new(Log::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let types = vec!["claude".to_string(), "claude".to_string()];
        let (l, q) = (log.clone(), queued.clone());
        let h = std::thread::spawn(move || run(&rx, 1, &types, &q, &*l));
        tx.send(DispatchCmd::Ready(1)).unwrap();
        tx.send(DispatchCmd::Submit(vec![task(
            "t1",
            5,
            Target::Type("claude".into()),
        )]))
        .unwrap();
        tx.send(DispatchCmd::Submit(vec![task("t2", 5, Target::Agent(0))]))
            .unwrap();
        tx.send(DispatchCmd::Submit(vec![task("t3", 5, Target::Agent(0))]))
            .unwrap();
        tx.send(DispatchCmd::Ready(0)).unwrap();
        tx.send(DispatchCmd::Submit(vec![task("t4", 5, Target::Agent(1))]))
            .unwrap();
        let (done, _) = crossbeam_channel::bounded(1);
        tx.send(DispatchCmd::Shutdown(done)).unwrap();
        tx.send(DispatchCmd::Submit(vec![task("t5", 5, Target::Agent(1))]))
            .unwrap();
        drop(tx);
        h.join().unwrap();
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
                "refused t5 ShuttingDown",
            ]
        );
        assert_eq!(queued.load(Ordering::Relaxed), 0);
    }

    /// `--to all`: every task of the request is acknowledged before the
    /// first is handed over, so no result can overtake an acknowledgement.
    #[test]
    fn a_request_for_several_agents_is_acknowledged_before_it_starts() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let log = Arc::new(Log::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let types = vec!["claude".to_string(), "claude".to_string()];
        let (l, q) = (log.clone(), queued.clone());
        let h = std::thread::spawn(move || run(&rx, 10, &types, &q, &*l));
        tx.send(DispatchCmd::Ready(0)).unwrap();
        tx.send(DispatchCmd::Ready(1)).unwrap();
        tx.send(DispatchCmd::Submit(vec![
            task("a", 5, Target::Agent(0)),
            task("b", 5, Target::Agent(1)),
        ]))
        .unwrap();
        drop(tx);
        h.join().unwrap();
        let got = log.0.lock().unwrap().clone();
        assert_eq!(
            got,
            ["accepted a 0", "accepted b 0", "assign 0 a", "assign 1 b"]
        );
    }
}
