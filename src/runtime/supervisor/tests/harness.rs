//! The fake world the supervisor's tests run in: a spawner whose children
//! are values that record what was written to them and which signals they
//! got, a clock the test moves, and the real channels to the dispatcher,
//! the hub and the tracker, read back after each step.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use crate::config::{AgentSpec, Config, PolicyKind};
use crate::message::dispatcher::{DispatchCmd, Target, Task};
use crate::message::envelope::{Envelope, Payload};
use crate::message::router::{AgentIx, Origin, RoutingTable};
use crate::message::schemas::{AgentState, CommandType, ReasonCode, ResourceUsage, TaskResult};
use crate::runtime::accounts::{Accounts, HoldBoard};
use crate::runtime::claude::Line;
use crate::runtime::error::ProcessError;
use crate::runtime::events::{Command, Event};
use crate::runtime::health_monitor::HealthCmd;
use crate::runtime::process::handle::SpawnDone;
use crate::runtime::process::{ChildHandle, ChildMsg, ChildSink, SpawnRequest, Spawner};
use crate::runtime::supervisor::timers::Clock;
use crate::runtime::supervisor::{Links, Supervisor};
use crate::runtime::tracker::TrackCmd;
use crate::transport::health_check::NatsState;
use crate::transport::hub::{HubCmd, Outbox};

/// A clock that moves only when the test says so.
#[derive(Clone)]
struct ManualClock(Rc<Cell<Instant>>, Instant);

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0.get()
    }

    /// The wall clock moves with the monotonic one, from 2026-01-01
    /// 12:00:00 UTC when the harness was made.
    fn wall_ms(&self) -> i64 {
        let moved = self.0.get().saturating_duration_since(self.1);
        WALL_START_MS + i64::try_from(moved.as_millis()).unwrap_or(0)
    }
}

pub(super) const WALL_START_MS: i64 = 1_767_268_800_000;

/// What happened to the fake children.
#[derive(Default)]
pub(super) struct World {
    pub(super) next_pid: u32,
    /// Every spawn: (agent id, pid, prompt).
    pub(super) spawns: Vec<(String, u32, Option<String>)>,
    /// The sink of each pid, to speak for the child.
    pub(super) sinks: HashMap<u32, ChildSink>,
    /// Lines written to each pid's stdin.
    pub(super) written: HashMap<u32, Vec<Value>>,
    /// Signals sent to each pid's group.
    pub(super) signals: HashMap<u32, Vec<i32>>,
    pub(super) stdin_closed: HashMap<u32, bool>,
    /// Spawns of these agent ids fail.
    pub(super) failing: Vec<String>,
    /// The session each pid was started to resume.
    pub(super) resumed: HashMap<u32, String>,
    /// What each pid wrote to stderr (else a line naming it).
    pub(super) stderr: HashMap<u32, Vec<String>>,
}

pub(super) type Shared = Arc<Mutex<World>>;

#[derive(Debug)]
pub(super) struct FakeChild {
    pid: u32,
    world: Shared,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("World")
    }
}

impl ChildHandle for FakeChild {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn write_line(&self, line: Vec<u8>) -> bool {
        let mut w = self.world.lock().unwrap();
        if w.stdin_closed.get(&self.pid).copied().unwrap_or(false) {
            return false;
        }
        let v = serde_json::from_slice(&line).unwrap();
        w.written.entry(self.pid).or_default().push(v);
        true
    }
    fn close_stdin(&mut self) {
        self.world
            .lock()
            .unwrap()
            .stdin_closed
            .insert(self.pid, true);
    }
    fn has_stdin(&self) -> bool {
        !self
            .world
            .lock()
            .unwrap()
            .stdin_closed
            .get(&self.pid)
            .copied()
            .unwrap_or(false)
    }
    fn signal_group(&self, signal: i32) -> io::Result<()> {
        let mut w = self.world.lock().unwrap();
        w.signals.entry(self.pid).or_default().push(signal);
        Ok(())
    }
    fn stderr_lines(&self) -> Vec<String> {
        let w = self.world.lock().unwrap();
        w.stderr
            .get(&self.pid)
            .cloned()
            .unwrap_or_else(|| vec![format!("stderr of {}", self.pid)])
    }
    fn resource_usage(&self) -> Option<ResourceUsage> {
        None
    }
}

pub(super) struct FakeSpawner(Shared);

impl Spawner for FakeSpawner {
    fn spawn(
        &mut self,
        req: SpawnRequest,
        sink: ChildSink,
    ) -> Result<Box<dyn ChildHandle>, ProcessError> {
        let mut w = self.0.lock().unwrap();
        if w.failing.contains(&req.spec.id) {
            return Err(ProcessError::Spawn {
                agent: req.spec.id.clone(),
                program: req.spec.command.clone(),
                source: io::Error::from_raw_os_error(libc::EMFILE),
            });
        }
        w.next_pid += 1;
        let pid = 1000 + w.next_pid;
        w.spawns
            .push((req.spec.id.clone(), pid, req.prompt.clone()));
        if let Some(s) = req.resume {
            w.resumed.insert(pid, s);
        }
        w.sinks.insert(pid, sink);
        Ok(Box::new(FakeChild {
            pid,
            world: self.0.clone(),
        }))
    }

    fn spawn_later(&mut self, req: SpawnRequest, sink: ChildSink, done: SpawnDone) {
        done(self.spawn(req, sink));
    }
}

/// A supervisor with fake children, and the other ends of its channels.
pub(super) struct Harness {
    pub(super) sup: Supervisor,
    pub(super) now: Rc<Cell<Instant>>,
    pub(super) world: Shared,
    pub(super) events: Sender<Event>,
    hub: Receiver<HubCmd>,
    dispatch: Receiver<DispatchCmd>,
    _health: Receiver<HealthCmd>,
    _tracker: Receiver<TrackCmd>,
    _signals: Sender<i32>,
    seq: u64,
}

pub(super) fn spec(id: &str) -> AgentSpec {
    let mut s = AgentSpec::new(id, "claude");
    s.restart.initial_delay = Duration::from_millis(100);
    s.restart.policy = PolicyKind::ExponentialBackoff;
    s
}

impl Harness {
    pub(super) fn new(specs: Vec<AgentSpec>) -> Harness {
        Harness::failing(specs, &[])
    }

    /// A harness where spawns of the agents named in `failing` fail.
    pub(super) fn failing(specs: Vec<AgentSpec>, failing: &[&str]) -> Harness {
        let config = Config {
            path: "test.json".into(),
            daemon_id: "test".into(),
            transport: Default::default(),
            message: Default::default(),
            accounts: Default::default(),
            logs: Default::default(),
            agents: specs.clone(),
        };
        let table = Arc::new(RoutingTable::new(&config));
        let (hub_tx, hub) = crossbeam_channel::unbounded();
        // One local client "connected": everything published reaches the
        // hub channel, where the test reads it.
        let outbox = Outbox::new(hub_tx, None, Arc::new(AtomicUsize::new(1)));
        let (dispatch_tx, dispatch) = crossbeam_channel::unbounded();
        let (health_tx, health) = crossbeam_channel::unbounded();
        let (tracker_tx, tracker) = crossbeam_channel::unbounded();
        let (signals_tx, signals_rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let links = Links {
            table,
            outbox,
            dispatch: dispatch_tx,
            health: health_tx,
            tracker: tracker_tx,
            nats: Arc::new(NatsState::default()),
            queued: Arc::new(AtomicUsize::new(0)),
            queue_capacity: 100,
            max_message_size: 1 << 20,
            accounts: Accounts::new(
                config.used_accounts(),
                &specs.iter().map(|s| s.account.clone()).collect::<Vec<_>>(),
                None,
                WALL_START_MS,
            ),
            holds: Arc::new(HoldBoard::new(specs.len())),
            retry_delay: Duration::from_millis(1000),
            pump: None,
            stream: None,
            transcripts: None,
            unrun: Default::default(),
            config: config.clone(),
            subs: None,
        };
        let now = Rc::new(Cell::new(Instant::now()));
        let world = Shared::default();
        world.lock().unwrap().failing = failing.iter().map(|s| s.to_string()).collect();
        let mut sup = Supervisor::new(
            specs,
            (events_tx.clone(), events_rx),
            signals_rx,
            links,
            Box::new(FakeSpawner(world.clone())),
            Box::new(ManualClock(now.clone(), now.get())),
        );
        // Jitter would make backoff delays vary; the tests read exact ones.
        sup.jitter = crate::runtime::backoff::Jitter::zero();
        let mut h = Harness {
            sup,
            now,
            world,
            events: events_tx,
            hub,
            dispatch,
            _health: health,
            _tracker: tracker,
            _signals: signals_tx,
            seq: 0,
        };
        h.sup.start_all();
        h.pump();
        h
    }

    /// Handles every event waiting, as the loop would.
    pub(super) fn pump(&mut self) {
        while let Ok(ev) = self.sup.events.try_recv() {
            self.sup.on_event(ev);
            self.sup.release_sessions();
        }
    }

    /// Moves the clock and fires what came due.
    pub(super) fn advance(&mut self, ms: u64) {
        self.now.set(self.now.get() + Duration::from_millis(ms));
        self.sup.fire_timers();
        self.sup.release_sessions();
        self.pump();
    }

    pub(super) fn pid(&self, agent: usize) -> u32 {
        self.sup.agents[agent]
            .child
            .as_ref()
            .map(|c| c.pid())
            .expect("a running child")
    }

    /// The child with `pid` reports `msg` (through the sink of its run).
    pub(super) fn says(&mut self, pid: u32, msg: ChildMsg) {
        let mut w = self.world.lock().unwrap();
        let sink = w.sinks.get_mut(&pid).expect("a sink for the pid");
        sink(msg);
        drop(w);
        self.pump();
    }

    pub(super) fn line(&mut self, agent: usize, v: Value) {
        let pid = self.pid(agent);
        let line = Line::classify(v.to_string().as_bytes(), 1 << 20);
        self.says(pid, ChildMsg::Line(line));
    }

    pub(super) fn exit_pid(&mut self, pid: u32, code: i32) {
        self.says(pid, ChildMsg::Exited(Ok(ExitStatus::from_raw(code << 8))));
    }

    pub(super) fn exit(&mut self, agent: usize, code: i32) {
        let pid = self.pid(agent);
        self.exit_pid(pid, code);
    }

    pub(super) fn killed(&mut self, agent: usize) {
        let pid = self.pid(agent);
        self.says(
            pid,
            ChildMsg::Exited(Ok(ExitStatus::from_raw(libc::SIGKILL))),
        );
    }

    /// Answers the pending `initialize` of `agent`.
    pub(super) fn initialize(&mut self, agent: usize) {
        let pid = self.pid(agent);
        let req = self.written(pid).last().cloned().expect("initialize");
        assert_eq!(req["request"]["subtype"], "initialize");
        self.line(
            agent,
            json!({"type": "control_response",
                   "response": {"subtype": "success", "request_id": req["request_id"]}}),
        );
    }

    pub(super) fn written(&self, pid: u32) -> Vec<Value> {
        self.world
            .lock()
            .unwrap()
            .written
            .get(&pid)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn signals(&self, pid: u32) -> Vec<i32> {
        self.world
            .lock()
            .unwrap()
            .signals
            .get(&pid)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn spawns(&self) -> usize {
        self.world.lock().unwrap().spawns.len()
    }

    pub(super) fn state(&self, agent: usize) -> AgentState {
        self.sup.agents[agent].state
    }

    pub(super) fn reason(&self, agent: usize) -> Option<ReasonCode> {
        self.sup.agents[agent].reason.as_ref().map(|r| r.code)
    }

    /// Everything published since the last call: (subject, envelope).
    pub(super) fn published(&self) -> Vec<(String, Envelope)> {
        let mut out = Vec::new();
        while let Ok(cmd) = self.hub.try_recv() {
            if let HubCmd::Publish { subject, data } = cmd {
                out.push((subject, Envelope::decode(&data, usize::MAX).unwrap()));
            }
        }
        out
    }

    /// The task results published to senders since the last look.
    pub(super) fn results(&self) -> Vec<TaskResult> {
        self.published()
            .into_iter()
            .filter(|(s, _)| s.starts_with("_INBOX"))
            .filter_map(|(_, e)| match e.payload {
                Payload::TaskResult(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    pub(super) fn dispatched(&self) -> Vec<String> {
        self.dispatch
            .try_iter()
            .map(|c| match c {
                DispatchCmd::Ready(i) => format!("ready {}", i.0),
                DispatchCmd::NotReady(i) => format!("not-ready {}", i.0),
                DispatchCmd::Requeue(t) => format!("requeue {}", t.task_id),
                DispatchCmd::Shutdown => "shutdown".into(),
                DispatchCmd::Submit(_) => "submit".into(),
                DispatchCmd::Down(i, why) => format!("down {} ({why})", i.0),
                DispatchCmd::Up(i) => format!("up {}", i.0),
                DispatchCmd::Grow(types) => format!("grow {}", types.join(",")),
                DispatchCmd::Release(seq) => format!("release {seq}"),
                DispatchCmd::Holds(i, s) => format!("holds {} {}", i.0, s.unwrap_or_default()),
            })
            .collect()
    }

    /// The tasks handed back to the dispatcher since the last look (other
    /// commands are dropped).
    pub(super) fn requeued(&self) -> Vec<Task> {
        self.dispatch
            .try_iter()
            .filter_map(|c| match c {
                DispatchCmd::Requeue(t) => Some(*t),
                _ => None,
            })
            .collect()
    }

    /// Hands `agent` `task` again, as the dispatcher would.
    pub(super) fn assign_task(&mut self, agent: usize, task: Task) {
        let _ = self
            .events
            .send(Event::Assign(AgentIx(agent), Box::new(task)));
        self.pump();
    }

    /// Hands `agent` a task with `timeout_ms`, as the dispatcher would.
    pub(super) fn assign(&mut self, agent: usize, id: &str, timeout_ms: u64) {
        self.assign_with_retries(agent, id, timeout_ms, 0);
    }

    /// [`Harness::assign`] with a retry budget.
    pub(super) fn assign_with_retries(
        &mut self,
        agent: usize,
        id: &str,
        timeout_ms: u64,
        retries: u32,
    ) {
        let task = self.task(agent, id, timeout_ms, retries);
        self.assign_task(agent, task);
    }

    /// A task for `agent` that continues claude session `session`, handed
    /// to it as the dispatcher would.
    pub(super) fn assign_session(
        &mut self,
        agent: usize,
        id: &str,
        session: &str,
        timeout_ms: u64,
    ) {
        let mut task = self.task(agent, id, timeout_ms, 0);
        task.session = Some(session.into());
        self.assign_task(agent, task);
    }

    /// A new task for `agent`, with a sequence number of its own.
    pub(super) fn task(&mut self, agent: usize, id: &str, timeout_ms: u64, retries: u32) -> Task {
        self.seq += 1;
        let now = self.now.get();
        let timeout = Duration::from_millis(timeout_ms);
        Task {
            task_id: id.into(),
            prompt: format!("do {id}"),
            context: None,
            priority: 5,
            timeout,
            deadline: now + timeout,
            target: Target::Agent(AgentIx(agent)),
            origin: Origin {
                reply_to: Some(format!("_INBOX.test.{id}")),
                ..Origin::default()
            },
            submitted: now,
            seq: self.seq,
            attempts: 0,
            retries,
            receipt: None,
            session: None,
        }
    }

    /// The first event of a turn, as claude opens every turn.
    pub(super) fn init_line(&mut self, agent: usize) {
        self.line(agent, json!({"type": "system", "subtype": "init"}));
    }

    /// A whole turn: its opening event, then a successful result.
    pub(super) fn result_line(&mut self, agent: usize, text: &str) {
        self.init_line(agent);
        self.line(
            agent,
            json!({"type": "result", "subtype": "success", "is_error": false,
                   "result": text, "total_cost_usd": 0.5}),
        );
    }

    pub(super) fn control(&mut self, agent: usize, op: CommandType) -> Envelope {
        self.control_all(agent, op)
            .into_iter()
            .find(|(s, _)| s == "_INBOX.ctl.1")
            .map(|(_, e)| e)
            .expect("a control answer")
    }

    /// A control command, and everything it published.
    pub(super) fn control_all(&mut self, agent: usize, op: CommandType) -> Vec<(String, Envelope)> {
        let cmd = Command::Control {
            agent: AgentIx(agent),
            op,
            origin: Origin {
                reply_to: Some("_INBOX.ctl.1".into()),
                ..Origin::default()
            },
        };
        let _ = self.events.send(Event::Command(cmd));
        self.pump();
        self.published()
    }

    /// A stream-json agent started and ready.
    pub(super) fn ready(specs: Vec<AgentSpec>) -> Harness {
        let n = specs.len();
        let mut h = Harness::new(specs);
        for i in 0..n {
            h.initialize(i);
        }
        h.published();
        h.dispatched();
        h
    }
}
