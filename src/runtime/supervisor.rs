//! The supervisor: the one thread that owns the agent table.
//!
//! It loops on a single `select_biased!` over signals, events (child exits,
//! stdout lines, health verdicts, commands, task assignments) and the
//! earliest pending timer (`crossbeam_channel::at`, or `never()` when nothing
//! is pending). Backoff restarts, stop escalation, startup deadlines, task
//! deadlines and the output watchdog are all entries in one timer map;
//! nothing polls and nothing sleeps.
//!
//! Every event carries the agent's index and the run number of the process
//! that produced it; events from an earlier run of the same agent are
//! dropped, so a late line or exit can never be taken for the current one.
//!
//! Every transition is published as an `agent_status`; task progress and
//! results go to the agent's subject and to the sender's reply subject.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, Receiver, Sender};
use serde_json::{json, Value};

use crate::config::{AgentSpec, Protocol};
use crate::message::dispatcher::{DispatchCmd, Task};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::{alert, answer_to, RoutingTable};
use crate::message::schemas::{
    AgentRegistration, AgentStatus, CommandType, HealthReport, RawEvent, TaskProgress, TaskResult,
    TaskStatus,
};
use crate::runtime::backoff::{Decision, Jitter, RestartBook};
use crate::runtime::health_monitor::{HealthCmd, Verdict};
use crate::runtime::lifecycle::{transition, State};
use crate::runtime::process_manager::{self, RunningChild};
use crate::runtime::tracker::TrackCmd;
use crate::transport::hub::Outbox;
use crate::transport::nats_transport::NatsState;

/// After closing a stream-json agent's stdin, how long it gets to exit by
/// itself before SIGTERM (at most; never more than a quarter of its
/// `stop_timeout_ms`).
const STDIN_GRACE: Duration = Duration::from_millis(500);

/// How long an agent gets to end a timed-out task after `interrupt` (or a
/// one-shot process after SIGTERM) before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// How long a one-shot process may linger after printing its `result`
/// before it is stopped (claude sometimes never exits: issue #25629).
const LINGER_AFTER_RESULT: Duration = Duration::from_secs(2);

/// Everything that can wake the supervisor, apart from signals and timers.
#[derive(Debug)]
pub enum Event {
    /// A child process exited (and was reaped).
    Exited {
        agent: usize,
        run: u64,
        status: std::io::Result<ExitStatus>,
    },
    /// A line on a child's stdout.
    Stdout { agent: usize, run: u64, line: Line },
    /// The result of a health check.
    Health {
        agent: usize,
        run: u64,
        verdict: Verdict,
    },
    /// A request from a transport.
    Command(Command),
    /// The dispatcher gives agent `usize` a task.
    Assign(usize, Box<Task>),
    /// The spawner pool started (or failed to start) agent `agent`'s run
    /// `run`.
    Spawned {
        agent: usize,
        run: u64,
        result: Result<RunningChild, crate::runtime::error::ProcessError>,
    },
}

/// Control requests, answered on their own channel.
#[derive(Debug)]
pub enum Command {
    Control {
        agent: usize,
        op: CommandType,
        reply: Sender<Result<AgentStatus, String>>,
    },
    Report {
        agent: Option<usize>,
        reply: Sender<HealthReport>,
    },
    /// Stop the daemon, as SIGTERM does.
    Shutdown,
}

/// A stdout line of an agent, classified by its reader thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An answer to one of our control requests.
    ControlResponse {
        request_id: String,
        error: Option<String>,
    },
    /// The `result` event that ends a turn.
    Result(Value),
    /// Any other JSON event (progress), as the agent wrote it.
    Event(RawEvent),
    /// A line that is not a JSON object.
    NotJson(String),
    /// A line too long to keep; it still counts as output.
    Dropped,
}

impl Line {
    /// Parses one stdout line. Unknown event types are progress, as the
    /// stream-json format asks (new types appear in new claude versions).
    /// A progress event longer than `limit` bytes (a whole file in a tool
    /// result, say) is replaced by a stub naming its type and size, so it
    /// can still be published within `max_message_size`.
    pub fn classify(raw: &[u8], limit: usize) -> Line {
        // Only the type is read; a progress event stays text (checked to be
        // JSON), since building a tree for each was most of the cost of
        // passing it on.
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", default, borrow)]
            kind: Option<Cow<'a, str>>,
            #[serde(default, borrow)]
            subtype: Option<Cow<'a, str>>,
        }
        let not_json = || {
            let text = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
            Line::NotJson(text)
        };
        let head = match raw.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => serde_json::from_slice::<Head>(raw).ok(),
            _ => None,
        };
        let Some(head) = head else {
            return not_json();
        };
        match head.kind.as_deref() {
            Some("result" | "control_response") => {}
            kind if raw.len() > limit => {
                // A huge event becomes a stub without its body ever being
                // held as a JSON tree.
                return Line::Event(RawEvent::from_value(&json!({
                    "type": kind,
                    "subtype": head.subtype,
                    "truncated_by_mister_smith": true,
                    "bytes": raw.len(),
                })));
            }
            _ => {
                return match RawEvent::from_text(raw) {
                    Ok(ev) => Line::Event(ev),
                    Err(_) => not_json(),
                }
            }
        }
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => return not_json(),
        };
        match v.get("type").and_then(Value::as_str) {
            Some("result") => Line::Result(v),
            _ => {
                let resp = v.get("response");
                let field = |k| resp.and_then(|r| r.get(k)).and_then(Value::as_str);
                let request_id = field("request_id").unwrap_or_default().to_string();
                let error = match field("subtype") {
                    Some("success") => None,
                    _ => Some(
                        field("error")
                            .unwrap_or("control request failed")
                            .to_string(),
                    ),
                };
                Line::ControlResponse { request_id, error }
            }
        }
    }
}

/// Why we are taking an agent's process down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takedown {
    /// Stop for good (`stop`, shutdown): ends in `terminated`.
    Stop,
    /// Stop, then start again at once (`restart`).
    Restart,
    /// A failure we detected (hung, unhealthy, no handshake): the exit goes
    /// through the restart policy as a failure.
    Failure(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Restart(usize),
    Term { agent: usize, run: u64 },
    Kill { agent: usize, run: u64 },
    Startup { agent: usize, run: u64 },
    Watchdog { agent: usize, generation: u64 },
    Deadline { agent: usize, seq: u64 },
    InterruptGrace { agent: usize, seq: u64 },
    Linger { agent: usize, run: u64 },
    ShutdownDeadline,
}

/// A task an agent is working on.
#[derive(Debug)]
struct Running {
    task: Task,
    started: Instant,
    timed_out: bool,
}

/// One row of the agent table.
struct Agent {
    spec: AgentSpec,
    state: State,
    /// Run number of the current (or last) process; starts at 0.
    run: u64,
    child: Option<RunningChild>,
    takedown: Option<Takedown>,
    book: RestartBook,
    restarts: u32,
    /// The request id of the pending `initialize` handshake.
    init_request: Option<String>,
    last_output: Instant,
    health_failures: u32,
    /// The state to return to on resume.
    paused_from: Option<State>,
    task: Option<Running>,
    /// A one-shot process has printed its result and should exit.
    result_seen: bool,
    tasks_done: u64,
    tasks_failed: u64,
    cost_usd: f64,
    /// Since when the agent has been up (not terminated or in error).
    up_since: Option<Instant>,
    /// Why the agent is in its state, when that is not obvious.
    reason: Option<String>,
    /// Bumped whenever the watchdog is armed; an older watchdog timer is
    /// stale.
    watchdog: u64,
}

impl Agent {
    fn new(spec: AgentSpec) -> Self {
        Agent {
            spec,
            state: State::Terminated,
            run: 0,
            child: None,
            takedown: None,
            book: RestartBook::default(),
            restarts: 0,
            init_request: None,
            last_output: Instant::now(),
            health_failures: 0,
            paused_from: None,
            task: None,
            result_seen: false,
            tasks_done: 0,
            tasks_failed: 0,
            cost_usd: 0.0,
            up_since: None,
            reason: None,
            watchdog: 0,
        }
    }
}

/// How the daemon's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped gracefully.
    Graceful,
    /// A second signal forced the stop; 128 + this signal.
    Forced(i32),
}

/// What the supervisor talks to besides its children.
pub struct Links {
    pub table: Arc<RoutingTable>,
    pub outbox: Outbox,
    pub dispatch: Sender<DispatchCmd>,
    pub health: Sender<HealthCmd>,
    pub tracker: Sender<TrackCmd>,
    /// Concurrent spawning for the cold start (`None`: spawn in place).
    pub spawner: Option<Sender<process_manager::SpawnJob>>,
    pub nats: Arc<NatsState>,
    pub queued: Arc<AtomicUsize>,
    pub queue_capacity: usize,
    pub max_message_size: usize,
}

pub struct Supervisor {
    agents: Vec<Agent>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    signals: Receiver<i32>,
    links: Links,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    jitter: Jitter,
    shutdown: Option<Outcome>,
    started: Instant,
    /// Starts handed to the spawner pool and not answered yet.
    pending_spawns: usize,
}

impl Supervisor {
    /// A supervisor for `specs`. Nothing starts until [`Supervisor::run`].
    pub fn new(
        specs: Vec<AgentSpec>,
        events_tx: Sender<Event>,
        events: Receiver<Event>,
        signals: Receiver<i32>,
        links: Links,
    ) -> Self {
        Supervisor {
            agents: specs.into_iter().map(Agent::new).collect(),
            events_tx,
            events,
            signals,
            links,
            timers: BTreeMap::new(),
            timer_seq: 0,
            jitter: Jitter::seeded(),
            shutdown: None,
            started: Instant::now(),
            pending_spawns: 0,
        }
    }

    /// Starts every agent and supervises them until a signal (or a
    /// `shutdown` command) stops the daemon and every process is gone.
    pub fn run(mut self) -> Outcome {
        for i in 0..self.agents.len() {
            let a = &self.agents[i];
            let reg = Envelope::new(Payload::AgentRegistration(AgentRegistration {
                agent_id: a.spec.id.clone(),
                agent_type: a.spec.agent_type.clone(),
                daemon_id: self.links.table.daemon_id.clone(),
                protocol: a.spec.protocol.as_str().into(),
            }));
            self.links.outbox.publish(
                &self.links.table.subject(i, MessageType::AgentRegistration),
                &reg,
            );
            // All at once: the spawner pool execs them concurrently.
            self.start_pooled(i);
        }
        log::info!("supervising {} agents", self.agents.len());
        loop {
            if let Some(outcome) = self.shutdown {
                if self.pending_spawns == 0 && self.agents.iter().all(|a| a.child.is_none()) {
                    // Assignments still in the channel get their answer.
                    while let Ok(ev) = self.events.try_recv() {
                        if let Event::Assign(i, task) = ev {
                            self.assign(i, *task);
                        }
                    }
                    log::info!("all agents stopped");
                    return outcome;
                }
            }
            let timer = match self.timers.keys().next() {
                Some(&(when, _)) => at(when),
                None => never(),
            };
            select_biased! {
                recv(self.signals) -> sig => match sig {
                    Ok(sig) => self.on_signal(sig),
                    // The signal thread is gone: nothing can stop us
                    // gracefully any more, so stop now.
                    Err(_) => self.on_signal(libc::SIGTERM),
                },
                recv(self.events) -> ev => {
                    // We hold a sender ourselves, so the channel never
                    // disconnects while we run.
                    if let Ok(ev) = ev {
                        self.on_event(ev);
                    }
                },
                recv(timer) -> _ => self.fire_timers(),
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        let name = signal_name(sig);
        match self.shutdown {
            None => self.begin_shutdown(&name),
            Some(Outcome::Graceful) => {
                log::warn!("{name} again: killing every agent now");
                self.shutdown = Some(Outcome::Forced(sig));
                self.kill_all();
            }
            Some(Outcome::Forced(_)) => self.kill_all(),
        }
    }

    fn begin_shutdown(&mut self, why: &str) {
        self.shutdown = Some(Outcome::Graceful);
        let live = self.agents.iter().filter(|a| a.child.is_some()).count();
        let wait = self
            .agents
            .iter()
            .map(|a| a.spec.stop_timeout)
            .max()
            .unwrap_or_default();
        log::info!(
            "{why}: stopping {live} agents (up to {} ms; send it again to kill them now)",
            wait.as_millis()
        );
        // Once the dispatcher has closed, every assignment it made is in our
        // event channel; they are answered `cancelled` as they come (or in
        // the final drain below).
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        if self
            .links
            .dispatch
            .send(DispatchCmd::Shutdown(done_tx))
            .is_ok()
        {
            let _ = done_rx.recv_timeout(Duration::from_secs(2));
        }
        self.timers.retain(|_, t| !matches!(t, Timer::Restart(_)));
        for i in 0..self.agents.len() {
            self.stop(i, Takedown::Stop);
        }
        // Past every stop timeout, whatever is left is killed; this only
        // matters if a Kill timer could not do it.
        self.schedule(wait + Duration::from_secs(1), Timer::ShutdownDeadline);
    }

    fn kill_all(&mut self) {
        for a in &self.agents {
            if let Some(c) = &a.child {
                let _ = process_manager::signal_group(c.pid, libc::SIGKILL);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Exited { agent, run, status } => {
                if self.is_current(agent, run) {
                    self.on_exit(agent, status);
                }
            }
            Event::Stdout { agent, run, line } => {
                if self.is_current(agent, run) {
                    self.on_line(agent, line);
                }
            }
            Event::Health {
                agent,
                run,
                verdict,
            } => {
                if self.is_current(agent, run) {
                    self.on_health(agent, verdict);
                }
            }
            Event::Command(cmd) => self.on_command(cmd),
            Event::Assign(i, task) => self.assign(i, *task),
            Event::Spawned { agent, run, result } => {
                self.pending_spawns = self.pending_spawns.saturating_sub(1);
                let a = &self.agents[agent];
                let wanted = a.run == run
                    && a.state == State::Initializing
                    && a.child.is_none()
                    && self.shutdown.is_none();
                match result {
                    Ok(child) if !wanted => {
                        // Stopped (or shut down) while it was being spawned.
                        let _ = process_manager::signal_group(child.pid, libc::SIGKILL);
                    }
                    _ if !wanted => {}
                    result => self.attach(agent, run, result),
                }
            }
        }
    }

    fn is_current(&self, agent: usize, run: u64) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|a| a.run == run && a.child.is_some())
    }

    /// Moves agent `i` to `to`, logging and publishing the transition; an
    /// illegal one is logged and refused.
    fn set_state(&mut self, i: usize, to: State) -> bool {
        let a = &mut self.agents[i];
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
            (State::Idle, State::Busy) | (State::Busy, State::Idle) => log::Level::Debug,
            _ => log::Level::Info,
        };
        match &a.child {
            Some(c) => log::log!(level, "agent {}: {from} -> {to} (pid {})", a.spec.id, c.pid),
            None => log::log!(level, "agent {}: {from} -> {to}", a.spec.id),
        }
        match to {
            State::Initializing => a.up_since = Some(Instant::now()),
            State::Terminated | State::Error => a.up_since = None,
            _ => {}
        }
        if a.spec.protocol != Protocol::None {
            if to == State::Idle {
                let _ = self.links.dispatch.send(DispatchCmd::Ready(i));
            } else if from == State::Idle && to != State::Busy {
                // Busy only ever follows the dispatcher's own assignment, so
                // it knows already; waking its thread in the task's first
                // microseconds would cost the agent a CPU on a small host.
                let _ = self.links.dispatch.send(DispatchCmd::NotReady(i));
            }
        }
        let status = self.status(i, Some(from));
        self.links.outbox.publish(
            &self.links.table.subject(i, MessageType::AgentStatus),
            &Envelope::new(Payload::AgentStatus(status)),
        );
        true
    }

    /// The status of agent `i`, as published on a transition (`previous`
    /// set) or reported on request. Only a report reads memory and CPU from
    /// `/proc`: a transition is on the restart path and must stay cheap.
    fn status(&self, i: usize, previous: Option<State>) -> AgentStatus {
        let a = &self.agents[i];
        let pid = a.child.as_ref().map(|c| c.pid);
        AgentStatus {
            agent_id: a.spec.id.clone(),
            status: Some(a.state),
            previous_status: previous,
            uptime_seconds: a
                .up_since
                .map_or(0.0, |t| (t.elapsed().as_millis() as f64) / 1000.0),
            pid,
            restarts: a.restarts,
            resource_usage: if previous.is_none() {
                pid.and_then(process_manager::resource_usage)
            } else {
                None
            },
            agent_type: Some(a.spec.agent_type.clone()),
            daemon_id: Some(self.links.table.daemon_id.clone()),
            tasks_completed: a.tasks_done,
            tasks_failed: a.tasks_failed,
            total_cost_usd: a.cost_usd,
            reason: a.reason.clone(),
        }
    }

    fn schedule(&mut self, after: Duration, timer: Timer) {
        self.timer_seq += 1;
        self.timers
            .insert((Instant::now() + after, self.timer_seq), timer);
    }

    fn schedule_at(&mut self, when: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((when, self.timer_seq), timer);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.on_timer(timer);
        }
    }

    fn running_seq(&self, i: usize) -> Option<u64> {
        self.agents[i].task.as_ref().map(|r| r.task.seq)
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Restart(i) => {
                if self.shutdown.is_none() && self.agents[i].state == State::Error {
                    self.start(i);
                }
            }
            Timer::Term { agent, run } => {
                if self.is_current(agent, run) {
                    self.send_term(agent);
                }
            }
            Timer::Kill { agent, run } => {
                if self.is_current(agent, run) {
                    let a = &self.agents[agent];
                    log::warn!(
                        "agent {}: still running {} ms after the stop began: SIGKILL",
                        a.spec.id,
                        a.spec.stop_timeout.as_millis()
                    );
                    self.signal(agent, libc::SIGKILL);
                }
            }
            Timer::Startup { agent, run } => {
                if self.is_current(agent, run) && self.agents[agent].state == State::Initializing {
                    let a = &self.agents[agent];
                    log::error!(
                        "agent {}: no answer to initialize within {} ms",
                        a.spec.id,
                        a.spec.startup_timeout.as_millis()
                    );
                    self.fail(agent, "startup timeout");
                }
            }
            Timer::Watchdog { agent, generation } => {
                let a = &self.agents[agent];
                if a.watchdog == generation && a.child.is_some() && a.state == State::Busy {
                    let a = &self.agents[agent];
                    let silent = a.last_output.elapsed();
                    if silent >= a.spec.health.idle_timeout {
                        log::error!(
                            "agent {}: busy and silent for {} ms: hung",
                            a.spec.id,
                            silent.as_millis()
                        );
                        self.fail(agent, "hung");
                    } else {
                        let left = a.spec.health.idle_timeout - silent;
                        self.schedule(left, Timer::Watchdog { agent, generation });
                    }
                }
            }
            Timer::Deadline { agent, seq } => {
                if self.running_seq(agent) == Some(seq) {
                    self.task_timed_out(agent);
                }
            }
            Timer::InterruptGrace { agent, seq } => {
                if self.running_seq(agent) == Some(seq) {
                    log::warn!(
                        "agent {}: timed-out task did not stop within {} ms: killing",
                        self.agents[agent].spec.id,
                        INTERRUPT_GRACE.as_millis()
                    );
                    self.fail(agent, "task timed out and did not stop");
                }
            }
            Timer::Linger { agent, run } => {
                if self.is_current(agent, run) && self.agents[agent].result_seen {
                    log::warn!(
                        "agent {}: still running {} ms after its result: stopping it",
                        self.agents[agent].spec.id,
                        LINGER_AFTER_RESULT.as_millis()
                    );
                    self.send_term(agent);
                    let t = self.agents[agent].spec.stop_timeout;
                    self.schedule(t, Timer::Kill { agent, run });
                }
            }
            Timer::ShutdownDeadline => {
                if self.agents.iter().any(|a| a.child.is_some()) {
                    log::warn!("shutdown deadline passed: killing what is left");
                    self.kill_all();
                }
            }
        }
    }

    /// Starts agent `i`: spawns its long-lived process, or for one-shot
    /// agents (a process per task) just marks it ready.
    fn start(&mut self, i: usize) {
        self.start_with(i, false);
    }

    /// Like [`Supervisor::start`], but through the spawner pool when there is
    /// one: the cold start's many execs then overlap.
    fn start_pooled(&mut self, i: usize) {
        self.start_with(i, true);
    }

    fn start_with(&mut self, i: usize, pooled: bool) {
        if self.agents[i].child.is_some() || !self.set_state(i, State::Initializing) {
            return;
        }
        let a = &mut self.agents[i];
        a.run += 1;
        a.takedown = None;
        a.health_failures = 0;
        a.paused_from = None;
        a.reason = None;
        if a.spec.protocol == Protocol::Oneshot {
            self.set_state(i, State::Idle);
            return;
        }
        let run = a.run;
        if let (true, Some(pool)) = (pooled, &self.links.spawner) {
            let job = process_manager::SpawnJob {
                agent: i,
                run,
                spec: a.spec.clone(),
                max_message_size: self.links.max_message_size,
            };
            if pool.send(job).is_ok() {
                self.pending_spawns += 1;
                return;
            }
        }
        let result = process_manager::spawn(
            i,
            run,
            &a.spec,
            None,
            self.links.max_message_size,
            &self.events_tx,
        );
        self.attach(i, run, result);
    }

    /// Takes a freshly spawned process (or the failure to spawn it) into
    /// agent `i`'s run `run`.
    fn attach(
        &mut self,
        i: usize,
        run: u64,
        result: Result<RunningChild, crate::runtime::error::ProcessError>,
    ) {
        let a = &mut self.agents[i];
        match result {
            Ok(child) => {
                a.last_output = Instant::now();
                let pid = child.pid;
                let _ = self.links.tracker.send(TrackCmd::Up {
                    id: a.spec.id.clone(),
                    pgid: pid,
                });
                a.child = Some(child);
                if a.spec.protocol == Protocol::StreamJson {
                    let id = format!("init-{}-{run}", a.spec.id);
                    let req = json!({
                        "type": "control_request",
                        "request_id": id,
                        "request": {"subtype": "initialize"},
                    });
                    a.init_request = Some(id);
                    if let Some(c) = &a.child {
                        c.write_line(req.to_string().into_bytes());
                    }
                    let t = a.spec.startup_timeout;
                    log::debug!("agent {}: started pid {pid}, sent initialize", a.spec.id);
                    self.schedule(t, Timer::Startup { agent: i, run });
                } else {
                    self.set_state(i, State::Idle);
                    self.watch_health(i);
                }
            }
            Err(e) => {
                log::error!("{e}");
                a.reason = Some(e.to_string());
                self.set_state(i, State::Error);
                self.after_exit(i, true, Duration::ZERO, Vec::new());
            }
        }
    }

    fn watch_health(&self, i: usize) {
        let a = &self.agents[i];
        if let (Some(cmd), Some(c)) = (&a.spec.health.command, &a.child) {
            let _ = self.links.health.send(HealthCmd::Watch {
                agent: i,
                run: a.run,
                id: a.spec.id.clone(),
                pid: c.pid,
                command: cmd.clone(),
                interval: a.spec.health.interval,
                timeout: a.spec.health.timeout,
            });
        }
    }

    /// Starts `task` on agent `i`, or hands it back to the dispatcher if the
    /// agent is no longer idle.
    fn assign(&mut self, i: usize, task: Task) {
        if self.shutdown.is_some() {
            self.answer_unstarted(
                i,
                &task,
                TaskStatus::Cancelled,
                "the daemon is shutting down".into(),
            );
            return;
        }
        if self.agents[i].state != State::Idle {
            let _ = self
                .links
                .dispatch
                .send(DispatchCmd::Requeue(Box::new(task)));
            return;
        }
        let a = &mut self.agents[i];
        let seq = task.seq;
        let deadline = task.deadline;
        match a.spec.protocol {
            Protocol::StreamJson => {
                let line = json!({
                    "type": "user",
                    "message": {"role": "user", "content": task.prompt},
                });
                let sent = a
                    .child
                    .as_ref()
                    .is_some_and(|c| c.write_line(line.to_string().into_bytes()));
                if !sent {
                    let _ = self
                        .links
                        .dispatch
                        .send(DispatchCmd::Requeue(Box::new(task)));
                    return;
                }
            }
            Protocol::Oneshot => {
                a.run += 1;
                let run = a.run;
                a.result_seen = false;
                match process_manager::spawn(
                    i,
                    run,
                    &a.spec,
                    Some(&task.prompt),
                    self.links.max_message_size,
                    &self.events_tx,
                ) {
                    Ok(child) => {
                        let _ = self.links.tracker.send(TrackCmd::Up {
                            id: a.spec.id.clone(),
                            pgid: child.pid,
                        });
                        a.child = Some(child);
                    }
                    Err(e) => {
                        log::error!("{e}");
                        let why = e.to_string();
                        a.reason = Some(why.clone());
                        a.tasks_failed += 1;
                        self.answer_unstarted(i, &task, TaskStatus::Failed, why);
                        self.set_state(i, State::Error);
                        self.after_exit(i, true, Duration::ZERO, Vec::new());
                        return;
                    }
                }
            }
            Protocol::None => {
                self.answer_unstarted(
                    i,
                    &task,
                    TaskStatus::Failed,
                    "this agent takes no tasks".into(),
                );
                return;
            }
        }
        log::info!(
            "agent {}: task {} started (priority {})",
            a.spec.id,
            task.task_id,
            task.priority
        );
        a.last_output = Instant::now();
        a.task = Some(Running {
            task,
            started: Instant::now(),
            timed_out: false,
        });
        self.set_state(i, State::Busy);
        self.arm_watchdog(i);
        self.schedule_at(deadline, Timer::Deadline { agent: i, seq });
    }

    fn arm_watchdog(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.watchdog += 1;
        let (t, generation) = (a.spec.health.idle_timeout, a.watchdog);
        self.schedule(
            t,
            Timer::Watchdog {
                agent: i,
                generation,
            },
        );
    }

    /// A running task reached its deadline: interrupt it (stream-json) or
    /// stop its process (one-shot); kill if that does not end it.
    fn task_timed_out(&mut self, i: usize) {
        let a = &mut self.agents[i];
        let Some(r) = a.task.as_mut() else { return };
        if r.timed_out {
            return;
        }
        r.timed_out = true;
        let seq = r.task.seq;
        if a.state == State::Paused {
            // A stopped process can neither answer nor exit: resume it.
            let _ = self.control(i, CommandType::Resume);
        }
        let a = &mut self.agents[i];
        let Some(r) = a.task.as_ref() else { return };
        log::warn!(
            "agent {}: task {} timed out after {} ms: interrupting",
            a.spec.id,
            r.task.task_id,
            r.task.timeout.as_millis()
        );
        match a.spec.protocol {
            Protocol::StreamJson => {
                let req = json!({
                    "type": "control_request",
                    "request_id": format!("interrupt-{}-{seq}", a.spec.id),
                    "request": {"subtype": "interrupt"},
                });
                if let Some(c) = &a.child {
                    c.write_line(req.to_string().into_bytes());
                }
            }
            _ => self.send_term(i),
        }
        self.schedule(INTERRUPT_GRACE, Timer::InterruptGrace { agent: i, seq });
    }

    fn on_line(&mut self, i: usize, line: Line) {
        let a = &mut self.agents[i];
        a.last_output = Instant::now();
        match line {
            Line::ControlResponse { request_id, error } => {
                if a.init_request.as_deref() == Some(request_id.as_str()) {
                    a.init_request = None;
                    match error {
                        None => {
                            if self.set_state(i, State::Idle) {
                                self.watch_health(i);
                            }
                        }
                        Some(e) => {
                            log::error!("agent {}: initialize refused: {e}", a.spec.id);
                            a.reason = Some(format!("initialize refused: {e}"));
                            self.fail(i, "initialize refused");
                        }
                    }
                } else {
                    log::debug!("agent {}: control response {request_id}", a.spec.id);
                }
            }
            Line::Result(ev) => self.on_result(i, &ev),
            Line::Event(ev) => {
                if let Some(r) = &a.task {
                    let progress = TaskProgress {
                        task_id: r.task.task_id.clone(),
                        agent_id: a.spec.id.clone(),
                        event: ev,
                    };
                    let mut env = answer_to(
                        Envelope::new(Payload::TaskProgress(progress)),
                        &r.task.origin,
                    );
                    env.source_agent_id = Some(a.spec.id.clone());
                    self.links.outbox.publish_and_reply(
                        &self.links.table.subject(i, MessageType::TaskProgress),
                        r.task.origin.reply_to.as_deref(),
                        &env,
                    );
                }
            }
            Line::Dropped => {}
            Line::NotJson(text) => {
                log::warn!("agent {}: stdout line is not JSON: {text}", a.spec.id);
            }
        }
    }

    fn on_result(&mut self, i: usize, ev: &Value) {
        let a = &mut self.agents[i];
        let Some(r) = a.task.take() else {
            log::warn!("agent {}: result with no task running", a.spec.id);
            return;
        };
        let is_error = ev.get("is_error").and_then(Value::as_bool).unwrap_or(true)
            || ev.get("subtype").and_then(Value::as_str) != Some("success");
        let status = if r.timed_out {
            TaskStatus::Timeout
        } else if is_error {
            TaskStatus::Failed
        } else {
            TaskStatus::Completed
        };
        let mut errors: Vec<String> = ev
            .get("errors")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if r.timed_out {
            errors.insert(
                0,
                format!("timed out after {} ms", r.task.timeout.as_millis()),
            );
        }
        let result = TaskResult {
            task_id: r.task.task_id.clone(),
            agent_id: a.spec.id.clone(),
            status,
            result: ev.get("result").and_then(Value::as_str).map(String::from),
            errors: (!errors.is_empty()).then_some(errors),
            duration_ms: r.started.elapsed().as_millis() as u64,
            num_turns: ev.get("num_turns").and_then(Value::as_u64),
            total_cost_usd: ev.get("total_cost_usd").and_then(Value::as_f64),
            usage: ev.get("usage").cloned(),
            session_id: ev
                .get("session_id")
                .and_then(Value::as_str)
                .map(String::from),
        };
        a.cost_usd += result.total_cost_usd.unwrap_or(0.0);
        if status == TaskStatus::Completed {
            a.tasks_done += 1;
        } else {
            a.tasks_failed += 1;
        }
        self.publish_result(i, &r.task, result);
        let a = &mut self.agents[i];
        log::info!(
            "agent {}: task {} {}",
            a.spec.id,
            r.task.task_id,
            status_word(status)
        );
        match a.spec.protocol {
            Protocol::Oneshot => {
                // The task is answered; the agent is free once its process
                // has gone, which it should do by itself.
                a.result_seen = true;
                let run = a.run;
                self.schedule(LINGER_AFTER_RESULT, Timer::Linger { agent: i, run });
            }
            _ => {
                if a.state == State::Busy {
                    self.set_state(i, State::Idle);
                } else if a.state == State::Paused {
                    a.paused_from = Some(State::Idle);
                }
            }
        }
    }

    fn publish_result(&self, i: usize, task: &Task, mut result: TaskResult) {
        // A result too large to publish keeps its head and says so.
        let limit = self.links.max_message_size.saturating_sub(16 * 1024);
        if let Some(text) = result.result.as_mut() {
            if text.len() > limit {
                let total = text.len();
                let mut cut = limit;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                result.errors.get_or_insert_with(Vec::new).push(format!(
                    "result truncated from {total} to {cut} bytes to fit max_message_size"
                ));
            }
        }
        let mut env = answer_to(Envelope::new(Payload::TaskResult(result)), &task.origin);
        env.source_agent_id = Some(self.agents[i].spec.id.clone());
        self.links.outbox.publish_and_reply(
            &self.links.table.subject(i, MessageType::TaskResult),
            task.origin.reply_to.as_deref(),
            &env,
        );
    }

    /// Answers a task that never ran (or whose agent died under it).
    fn answer_unstarted(&self, i: usize, task: &Task, status: TaskStatus, why: String) {
        self.answer_with(i, task, status, vec![why], task.submitted);
    }

    fn answer_with(
        &self,
        i: usize,
        task: &Task,
        status: TaskStatus,
        errors: Vec<String>,
        since: Instant,
    ) {
        let result = TaskResult {
            task_id: task.task_id.clone(),
            agent_id: self.agents[i].spec.id.clone(),
            status,
            result: None,
            errors: Some(errors),
            duration_ms: since.elapsed().as_millis() as u64,
            num_turns: None,
            total_cost_usd: None,
            usage: None,
            session_id: None,
        };
        self.publish_result(i, task, result);
    }

    fn on_health(&mut self, i: usize, verdict: Verdict) {
        let a = &mut self.agents[i];
        if !matches!(a.state, State::Idle | State::Busy) {
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
                    a.reason = Some(format!("unhealthy: {why}"));
                    self.fail(i, "unhealthy");
                }
            }
        }
    }

    /// Takes agent `i` down because of a failure we detected: `error`, then
    /// SIGKILL to the group; its exit goes through the restart policy.
    fn fail(&mut self, i: usize, why: &'static str) {
        if self.agents[i].child.is_none() {
            return;
        }
        if matches!(
            self.agents[i].takedown,
            Some(Takedown::Stop | Takedown::Restart)
        ) {
            // Already on its way down at someone's request: finish it, but
            // keep the request (a stop must not turn into a restart).
            self.signal(i, libc::SIGKILL);
            return;
        }
        if self.agents[i].state != State::Error {
            self.set_state(i, State::Error);
        }
        let a = &mut self.agents[i];
        if a.reason.is_none() {
            a.reason = Some(why.into());
        }
        a.takedown = Some(Takedown::Failure(why));
        self.signal(i, libc::SIGKILL);
        // A stopped process dies of SIGKILL too; no SIGCONT needed.
    }

    /// Begins stopping agent `i`: close stdin, SIGTERM, SIGKILL at
    /// `stop_timeout_ms`.
    fn stop(&mut self, i: usize, why: Takedown) {
        if self.agents[i].child.is_none() {
            self.stop_without_process(i, why);
            return;
        }
        let a = &mut self.agents[i];
        match (a.takedown, why) {
            // A stop overrides anything; nothing else overrides a takedown
            // already under way.
            (Some(_), Takedown::Stop) | (None, _) => a.takedown = Some(why),
            (Some(_), _) => return,
        }
        if a.state != State::Stopping {
            self.set_state(i, State::Stopping);
        }
        let a = &mut self.agents[i];
        let run = a.run;
        let timeout = a.spec.stop_timeout;
        let was_paused = a.paused_from.take().is_some();
        let had_stdin = a.child.as_ref().is_some_and(|c| c.stdin.is_some());
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
    fn stop_without_process(&mut self, i: usize, why: Takedown) {
        self.timers.retain(|_, t| *t != Timer::Restart(i));
        let state = self.agents[i].state;
        if why == Takedown::Restart {
            self.agents[i].book.reset();
            if state == State::Idle {
                // A one-shot agent between tasks has nothing to restart.
                return;
            }
            if state == State::Error {
                self.set_state(i, State::Terminated);
            }
            self.start(i);
            return;
        }
        if state == State::Terminated {
            return;
        }
        if state != State::Error {
            self.set_state(i, State::Stopping);
        }
        self.set_state(i, State::Terminated);
    }

    fn send_term(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        // A stopped process only acts on SIGTERM once continued.
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, sig: i32) {
        let a = &self.agents[i];
        if let Some(c) = &a.child {
            if let Err(e) = process_manager::signal_group(c.pid, sig) {
                log::error!("agent {}: cannot signal group {}: {e}", a.spec.id, c.pid);
            }
        }
    }

    fn on_exit(&mut self, i: usize, status: std::io::Result<ExitStatus>) {
        let a = &mut self.agents[i];
        let Some(child) = a.child.take() else { return };
        let uptime = child.started.elapsed();
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
        let takedown = a.takedown.take();
        if let Some(r) = a.task.take() {
            // The task did not get its result: answer it from what we know.
            let (status, why) = match takedown {
                _ if r.timed_out => (
                    TaskStatus::Timeout,
                    format!("timed out after {} ms", r.task.timeout.as_millis()),
                ),
                Some(Takedown::Stop) | Some(Takedown::Restart) => (
                    TaskStatus::Cancelled,
                    format!("the agent was stopped ({how})"),
                ),
                Some(Takedown::Failure(why)) => (
                    TaskStatus::Failed,
                    format!("the agent was taken down: {why}"),
                ),
                None => (
                    TaskStatus::Failed,
                    format!("the agent {how} before its result"),
                ),
            };
            if status == TaskStatus::Failed {
                a.tasks_failed += 1;
            }
            log::warn!(
                "agent {}: task {} {}: {why}",
                a.spec.id,
                r.task.task_id,
                status_word(status)
            );
            let mut errors = vec![why];
            errors.extend(tail.iter().rev().take(5).rev().cloned());
            self.answer_with(i, &r.task, status, errors, r.started);
        }
        let a = &mut self.agents[i];
        match takedown {
            Some(Takedown::Stop) => {
                log::info!("agent {}: {how}", a.spec.id);
                if a.state == State::Error {
                    self.set_state(i, State::Stopping);
                }
                self.set_state(i, State::Terminated);
            }
            Some(Takedown::Restart) => {
                log::info!("agent {}: {how}; starting it again", a.spec.id);
                self.set_state(i, State::Terminated);
                if self.shutdown.is_none() {
                    self.agents[i].restarts += 1;
                    self.start(i);
                }
            }
            Some(Takedown::Failure(why)) => {
                log::warn!("agent {}: {how} (taken down: {why})", a.spec.id);
                self.after_exit(i, true, uptime, tail);
            }
            None if a.spec.protocol == Protocol::Oneshot && a.state == State::Busy => {
                // A one-shot task process ending is the normal case.
                log::debug!("agent {}: task process {how}", a.spec.id);
                self.set_state(i, State::Idle);
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
                a.reason = Some(how);
                if self.agents[i].state != State::Error {
                    self.set_state(i, State::Error);
                }
                self.after_exit(i, !clean, uptime, tail);
            }
        }
    }

    /// Applies the restart policy to agent `i`, now in `error` with no
    /// process.
    fn after_exit(&mut self, i: usize, failed: bool, uptime: Duration, tail: Vec<String>) {
        if self.shutdown.is_some() {
            self.set_state(i, State::Terminated);
            return;
        }
        let jitter = self.jitter.next_unit();
        let a = &mut self.agents[i];
        let decision = a
            .book
            .decide(&a.spec.restart, failed, uptime, Instant::now(), jitter);
        match decision {
            Decision::Restart { delay, attempt } => {
                a.restarts += 1;
                log::info!(
                    "agent {}: restarting in {} ms (policy {}, attempt {attempt})",
                    a.spec.id,
                    delay.as_millis(),
                    a.spec.restart.policy.as_str()
                );
                a.reason = Some(format!("restarting (attempt {attempt})"));
                if delay.is_zero() {
                    self.start(i);
                } else {
                    self.schedule(delay, Timer::Restart(i));
                }
            }
            Decision::Stay => {
                log::info!(
                    "agent {}: not restarted (policy {})",
                    a.spec.id,
                    a.spec.restart.policy.as_str()
                );
                a.reason = Some(format!(
                    "exited; policy {} does not restart it",
                    a.spec.restart.policy.as_str()
                ));
                self.set_state(i, State::Terminated);
            }
            Decision::GiveUp { restarts } => {
                let message = format!(
                    "restart budget spent ({restarts} restarts within {} ms): terminated",
                    a.spec.restart.window.as_millis()
                );
                log::error!("ALERT agent {}: {message}", a.spec.id);
                a.reason = Some("restart budget spent".into());
                let mut env = alert(
                    "critical",
                    "restart_budget_spent",
                    message,
                    Some(&a.spec.id),
                    None,
                );
                if let Payload::SystemAlert(al) = &mut env.payload {
                    al.stderr = Some(tail);
                }
                env.source_agent_id = Some(a.spec.id.clone());
                self.links
                    .outbox
                    .publish(&self.links.table.subject(i, MessageType::SystemAlert), &env);
                self.set_state(i, State::Terminated);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown => {
                if self.shutdown.is_none() {
                    self.begin_shutdown("shutdown requested");
                }
            }
            Command::Report { agent, reply } => {
                let agents = match agent {
                    Some(i) => vec![self.status(i, None)],
                    None => (0..self.agents.len())
                        .map(|i| self.status(i, None))
                        .collect(),
                };
                let _ = reply.send(HealthReport {
                    daemon_id: self.links.table.daemon_id.clone(),
                    uptime_seconds: (self.started.elapsed().as_millis() as f64) / 1000.0,
                    nats: self.links.nats.describe().into(),
                    queued: self.links.queued.load(Ordering::Relaxed),
                    queue_capacity: self.links.queue_capacity,
                    agents,
                });
            }
            Command::Control { agent, op, reply } => {
                let r = if self.shutdown.is_some() {
                    Err("the daemon is shutting down".to_string())
                } else {
                    self.control(agent, op)
                };
                let _ = reply.send(r.map(|()| self.status(agent, None)));
            }
        }
    }

    fn control(&mut self, i: usize, op: CommandType) -> Result<(), String> {
        let state = self.agents[i].state;
        let id = self.agents[i].spec.id.clone();
        match op {
            CommandType::Start => match state {
                State::Terminated | State::Error => {
                    self.timers.retain(|_, t| *t != Timer::Restart(i));
                    self.agents[i].book.reset();
                    if state == State::Error && self.agents[i].child.is_none() {
                        self.set_state(i, State::Terminated);
                    }
                    self.start(i);
                    Ok(())
                }
                State::Stopping => Err(format!(
                    "agent {id} is stopping; start it once it is terminated"
                )),
                _ => Ok(()),
            },
            CommandType::Stop => {
                self.agents[i].reason = Some("stopped by an operator".into());
                self.stop(i, Takedown::Stop);
                Ok(())
            }
            CommandType::Restart => {
                self.agents[i].reason = None;
                self.stop(i, Takedown::Restart);
                Ok(())
            }
            CommandType::Pause => match state {
                State::Paused => Ok(()),
                State::Idle | State::Busy if self.agents[i].child.is_some() => {
                    self.signal(i, libc::SIGSTOP);
                    self.agents[i].paused_from = Some(state);
                    self.set_state(i, State::Paused);
                    Ok(())
                }
                s => Err(format!(
                    "agent {id} is {s}{}: nothing to pause",
                    if s == State::Idle {
                        " with no process"
                    } else {
                        ""
                    }
                )),
            },
            CommandType::Resume => match state {
                State::Paused => {
                    let a = &mut self.agents[i];
                    let to = a.paused_from.take().unwrap_or(State::Idle);
                    // Time spent stopped is not silence.
                    a.last_output = Instant::now();
                    self.signal(i, libc::SIGCONT);
                    self.set_state(i, to);
                    if to == State::Busy {
                        self.arm_watchdog(i);
                    }
                    Ok(())
                }
                State::Idle | State::Busy => Ok(()),
                s => Err(format!("agent {id} is {s}, not paused")),
            },
            CommandType::Execute | CommandType::Shutdown => {
                Err(format!("{} is handled before the supervisor", op.as_str()))
            }
        }
    }
}

fn status_word(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Timeout => "timed out",
    }
}

/// "exited with status 1", "killed by SIGKILL", for logs.
pub fn describe_exit(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("ended (status unknown: {e})"),
    }
}

/// SIGTERM, SIGKILL, ... by number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGXCPU => "SIGXCPU",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_lines_are_classified() {
        let ok = br#"{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"pid":1}}}"#;
        assert_eq!(
            Line::classify(ok, 1000),
            Line::ControlResponse {
                request_id: "r1".into(),
                error: None
            }
        );
        let bad = br#"{"type":"control_response","response":{"subtype":"error","request_id":"r2","error":"Unsupported"}}"#;
        assert_eq!(
            Line::classify(bad, 1000),
            Line::ControlResponse {
                request_id: "r2".into(),
                error: Some("Unsupported".into())
            }
        );
        assert!(matches!(
            Line::classify(br#"{"type":"result","subtype":"success"}"#, 10),
            Line::Result(_)
        ));
        assert!(matches!(
            Line::classify(br#"{"type":"brand_new_kind"}"#, 1000),
            Line::Event(_)
        ));
        assert!(matches!(Line::classify(b"[1,2]", 1000), Line::NotJson(_)));
        assert!(matches!(
            Line::classify(b"{\"type\":", 1000),
            Line::NotJson(_)
        ));
        assert_eq!(
            Line::classify(br#"{"type":"user","message":"a long tool result"}"#, 20),
            Line::Event(RawEvent::from_value(
                &json!({"type": "user", "subtype": null, "truncated_by_mister_smith": true, "bytes": 46})
            ))
        );
    }
}
