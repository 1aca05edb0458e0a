//! The supervisor: the one thread that owns the agent table.
//!
//! It loops on a single `select_biased!` over signals, events (child exits,
//! stdout lines, health verdicts, commands) and the earliest pending timer
//! (`crossbeam_channel::at`, or `never()` when nothing is pending). Backoff
//! restarts, stop escalation, startup deadlines and the output watchdog are
//! all entries in one timer map; nothing polls and nothing sleeps.
//!
//! Every event carries the agent's index and the run number of the process
//! that produced it; events from an earlier run of the same agent are
//! dropped, so a late line or exit can never be taken for the current one.

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, Receiver, Sender};
use serde_json::Value;

use crate::config::{AgentSpec, Protocol};
use crate::runtime::backoff::{Decision, Jitter, RestartBook};
use crate::runtime::health_monitor::{HealthCmd, Verdict};
use crate::runtime::lifecycle::{transition, State};
use crate::runtime::process_manager::{self, RunningChild};

/// After closing a stream-json agent's stdin, how long it gets to exit by
/// itself before SIGTERM (at most; never more than a quarter of its
/// `stop_timeout_ms`).
const STDIN_GRACE: Duration = Duration::from_millis(500);

/// Everything that can wake the supervisor, apart from signals and timers.
#[derive(Debug)]
pub enum Event {
    /// A child process exited (and was reaped).
    Exited {
        agent: usize,
        run: u64,
        status: std::io::Result<ExitStatus>,
    },
    /// A line on a stream-json child's stdout.
    Stdout { agent: usize, run: u64, line: Line },
    /// The result of a health check.
    Health {
        agent: usize,
        run: u64,
        verdict: Verdict,
    },
    /// A request from the CLI or a transport.
    Command(Command),
}

/// Control requests, by agent id.
#[derive(Debug)]
pub enum Command {
    Start(String, Sender<Result<(), String>>),
    Stop(String, Sender<Result<(), String>>),
    Restart(String, Sender<Result<(), String>>),
    Pause(String, Sender<Result<(), String>>),
    Resume(String, Sender<Result<(), String>>),
    /// Give a task to an idle stream-json agent.
    Assign {
        agent: String,
        task_id: String,
        prompt: String,
        reply: Sender<Result<(), String>>,
    },
}

/// A stdout line of a stream-json agent, classified by its reader thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An answer to one of our control requests.
    ControlResponse {
        request_id: String,
        error: Option<String>,
    },
    /// The `result` event that ends a turn.
    Result(Value),
    /// Any other JSON event (progress).
    Event(Value),
    /// A line that is not a JSON object.
    NotJson(String),
    /// A line too long to keep; it still counts as output.
    Dropped,
}

impl Line {
    /// Parses one stdout line. Unknown event types are progress, as the
    /// stream-json format asks (new types appear in new claude versions).
    pub fn classify(raw: &[u8]) -> Line {
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let text = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
                return Line::NotJson(text);
            }
        };
        match v.get("type").and_then(Value::as_str) {
            Some("result") => Line::Result(v),
            Some("control_response") => {
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
            _ => Line::Event(v),
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
    Watchdog { agent: usize, run: u64 },
    ShutdownDeadline,
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
    task: Option<String>,
    tasks_done: u64,
    tasks_failed: u64,
    cost_usd: f64,
    /// The state before the last transition.
    previous: State,
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
            tasks_done: 0,
            tasks_failed: 0,
            cost_usd: 0.0,
            previous: State::Terminated,
        }
    }
}

/// How the daemon's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped gracefully on this signal.
    Graceful,
    /// A second signal forced the stop; 128 + this signal.
    Forced(i32),
}

pub struct Supervisor {
    agents: Vec<Agent>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    signals: Receiver<i32>,
    health: Sender<HealthCmd>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    jitter: Jitter,
    shutdown: Option<Outcome>,
}

impl Supervisor {
    /// A supervisor for `specs`. Nothing starts until [`Supervisor::run`].
    pub fn new(
        specs: Vec<AgentSpec>,
        events_tx: Sender<Event>,
        events: Receiver<Event>,
        signals: Receiver<i32>,
        health: Sender<HealthCmd>,
    ) -> Self {
        Supervisor {
            agents: specs.into_iter().map(Agent::new).collect(),
            events_tx,
            events,
            signals,
            health,
            timers: BTreeMap::new(),
            timer_seq: 0,
            jitter: Jitter::seeded(),
            shutdown: None,
        }
    }

    /// Starts every agent and supervises them until a signal stops the daemon
    /// and every process is gone.
    pub fn run(mut self) -> Outcome {
        for i in 0..self.agents.len() {
            self.start(i);
        }
        log::info!("supervising {} agents", self.agents.len());
        loop {
            if let Some(outcome) = self.shutdown {
                if self.agents.iter().all(|a| a.child.is_none()) {
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
            None => {
                self.shutdown = Some(Outcome::Graceful);
                let live = self.agents.iter().filter(|a| a.child.is_some()).count();
                let wait = self
                    .agents
                    .iter()
                    .map(|a| a.spec.stop_timeout)
                    .max()
                    .unwrap_or_default();
                log::info!(
                    "{name}: stopping {live} agents (up to {} ms; send it again to kill them now)",
                    wait.as_millis()
                );
                self.timers.retain(|_, t| !matches!(t, Timer::Restart(_)));
                for i in 0..self.agents.len() {
                    self.stop(i, Takedown::Stop);
                }
                // Past every stop timeout, whatever is left is killed; this
                // only matters if a Kill timer could not do it.
                self.schedule(wait + Duration::from_secs(1), Timer::ShutdownDeadline);
            }
            Some(Outcome::Graceful) => {
                log::warn!("{name} again: killing every agent now");
                self.shutdown = Some(Outcome::Forced(sig));
                self.kill_all();
            }
            Some(Outcome::Forced(_)) => self.kill_all(),
        }
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
        }
    }

    fn is_current(&self, agent: usize, run: u64) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|a| a.run == run && a.child.is_some())
    }

    /// Moves agent `i` to `to`, logging the transition; an illegal one is
    /// logged and refused.
    fn set_state(&mut self, i: usize, to: State) -> bool {
        let a = &mut self.agents[i];
        match transition(&mut a.state, to) {
            Ok(from) => {
                a.previous = from;
                match &a.child {
                    Some(c) => log::info!("agent {}: {from} -> {to} (pid {})", a.spec.id, c.pid),
                    None => log::info!("agent {}: {from} -> {to}", a.spec.id),
                }
                true
            }
            Err(e) => {
                log::warn!("agent {}: {e} refused", a.spec.id);
                false
            }
        }
    }

    fn schedule(&mut self, after: Duration, timer: Timer) {
        self.timer_seq += 1;
        self.timers
            .insert((Instant::now() + after, self.timer_seq), timer);
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
            Timer::Watchdog { agent, run } => {
                if self.is_current(agent, run) && self.agents[agent].state == State::Busy {
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
                        self.schedule(left, Timer::Watchdog { agent, run });
                    }
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

    /// Spawns agent `i`'s process (or, for one-shot agents, marks it ready).
    fn start(&mut self, i: usize) {
        if self.agents[i].child.is_some() || !self.set_state(i, State::Initializing) {
            return;
        }
        let a = &mut self.agents[i];
        a.run += 1;
        a.takedown = None;
        a.health_failures = 0;
        a.paused_from = None;
        a.task = None;
        if a.spec.protocol == Protocol::Oneshot {
            // One-shot agents have a process per task, none while idle.
            self.set_state(i, State::Idle);
            return;
        }
        let run = a.run;
        match process_manager::spawn(i, run, &a.spec, &self.events_tx) {
            Ok(child) => {
                a.last_output = Instant::now();
                let pid = child.pid;
                a.child = Some(child);
                match a.spec.protocol {
                    Protocol::StreamJson => {
                        let id = format!("init-{}-{run}", a.spec.id);
                        let req = serde_json::json!({
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
                    }
                    _ => {
                        self.set_state(i, State::Idle);
                        self.watch_health(i);
                    }
                }
            }
            Err(e) => {
                log::error!("{e}");
                self.set_state(i, State::Error);
                self.after_exit(i, true, Duration::ZERO);
            }
        }
    }

    fn watch_health(&self, i: usize) {
        let a = &self.agents[i];
        if let (Some(cmd), Some(c)) = (&a.spec.health.command, &a.child) {
            let _ = self.health.send(HealthCmd::Watch {
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
                            self.fail(i, "initialize refused");
                        }
                    }
                } else {
                    log::debug!("agent {}: control response {request_id}", a.spec.id);
                }
            }
            Line::Result(ev) => {
                let is_error = ev.get("is_error").and_then(Value::as_bool).unwrap_or(true)
                    || ev.get("subtype").and_then(Value::as_str) != Some("success");
                let cost = ev
                    .get("total_cost_usd")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                if let Some(task) = a.task.take() {
                    a.cost_usd += cost;
                    if is_error {
                        a.tasks_failed += 1;
                    } else {
                        a.tasks_done += 1;
                    }
                    log::info!(
                        "agent {}: task {task} {}",
                        a.spec.id,
                        if is_error { "failed" } else { "completed" }
                    );
                    if a.state == State::Busy {
                        self.set_state(i, State::Idle);
                    } else if a.state == State::Paused {
                        a.paused_from = Some(State::Idle);
                    }
                } else {
                    log::warn!("agent {}: result with no task running", a.spec.id);
                }
            }
            Line::Event(_) | Line::Dropped => {}
            Line::NotJson(text) => {
                log::warn!("agent {}: stdout line is not JSON: {text}", a.spec.id);
            }
        }
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
        self.set_state(i, State::Error);
        self.agents[i].takedown = Some(Takedown::Failure(why));
        self.signal(i, libc::SIGKILL);
    }

    /// Begins stopping agent `i`: close stdin, SIGTERM, SIGKILL at
    /// `stop_timeout_ms`.
    fn stop(&mut self, i: usize, why: Takedown) {
        let a = &mut self.agents[i];
        if a.child.is_none() {
            // Nothing runs: a pending restart is cancelled and the agent is
            // down for good.
            self.timers.retain(|_, t| *t != Timer::Restart(i));
            if why == Takedown::Restart {
                self.agents[i].book.reset();
                if self.agents[i].state == State::Idle {
                    // A one-shot agent has no process to restart.
                    return;
                }
                self.start(i);
            } else if a.state != State::Terminated {
                if a.state != State::Error {
                    self.set_state(i, State::Stopping);
                }
                self.set_state(i, State::Terminated);
            }
            return;
        }
        if a.takedown.is_some() && why != Takedown::Stop {
            return;
        }
        if a.takedown.is_none() || why == Takedown::Stop {
            a.takedown = Some(why);
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
        if had_stdin && !was_paused {
            let grace = STDIN_GRACE.min(timeout / 4);
            self.schedule(grace, Timer::Term { agent: i, run });
        } else {
            self.send_term(i);
        }
        self.schedule(timeout, Timer::Kill { agent: i, run });
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
        let _ = self.health.send(HealthCmd::Unwatch { agent: i });
        a.init_request = None;
        a.paused_from = None;
        let how = describe_exit(&status);
        let clean = matches!(&status, Ok(s) if s.success());
        if let Some(task) = a.task.take() {
            a.tasks_failed += 1;
            log::warn!("agent {}: task {task} failed: the agent {how}", a.spec.id);
        }
        match a.takedown.take() {
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
                self.after_exit(i, true, uptime);
            }
            None => {
                let tail = child.stderr_lines();
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
                if self.agents[i].state != State::Error {
                    self.set_state(i, State::Error);
                }
                self.after_exit(i, !clean, uptime);
            }
        }
    }

    /// Applies the restart policy to agent `i`, now in `error` with no
    /// process.
    fn after_exit(&mut self, i: usize, failed: bool, uptime: Duration) {
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
                self.schedule(delay, Timer::Restart(i));
            }
            Decision::Stay => {
                log::info!(
                    "agent {}: not restarted (policy {})",
                    a.spec.id,
                    a.spec.restart.policy.as_str()
                );
                self.set_state(i, State::Terminated);
            }
            Decision::GiveUp { restarts } => {
                log::error!(
                    "ALERT agent {}: restart budget spent ({restarts} restarts within {} ms): terminated",
                    a.spec.id,
                    a.spec.restart.window.as_millis()
                );
                self.set_state(i, State::Terminated);
            }
        }
    }

    fn find(&self, id: &str) -> Result<usize, String> {
        self.agents
            .iter()
            .position(|a| a.spec.id == id)
            .ok_or_else(|| format!("no agent {id:?} on this daemon"))
    }

    fn on_command(&mut self, cmd: Command) {
        if self.shutdown.is_some() {
            let reply = match &cmd {
                Command::Start(_, r)
                | Command::Stop(_, r)
                | Command::Restart(_, r)
                | Command::Pause(_, r)
                | Command::Resume(_, r)
                | Command::Assign { reply: r, .. } => r,
            };
            let _ = reply.send(Err("the daemon is shutting down".into()));
            return;
        }
        match cmd {
            Command::Start(id, reply) => {
                let r = self.find(&id).and_then(|i| match self.agents[i].state {
                    State::Terminated => {
                        self.agents[i].book.reset();
                        self.start(i);
                        Ok(())
                    }
                    s => Err(format!("agent {id} is {s}, not terminated")),
                });
                let _ = reply.send(r);
            }
            Command::Stop(id, reply) => {
                let r = self.find(&id).map(|i| self.stop(i, Takedown::Stop));
                let _ = reply.send(r);
            }
            Command::Restart(id, reply) => {
                let r = self.find(&id).map(|i| self.stop(i, Takedown::Restart));
                let _ = reply.send(r);
            }
            Command::Pause(id, reply) => {
                let r = self.find(&id).and_then(|i| self.pause(i));
                let _ = reply.send(r);
            }
            Command::Resume(id, reply) => {
                let r = self.find(&id).and_then(|i| self.resume(i));
                let _ = reply.send(r);
            }
            Command::Assign {
                agent,
                task_id,
                prompt,
                reply,
            } => {
                let r = self
                    .find(&agent)
                    .and_then(|i| self.assign(i, task_id, &prompt));
                let _ = reply.send(r);
            }
        }
    }

    fn pause(&mut self, i: usize) -> Result<(), String> {
        let a = &self.agents[i];
        if !matches!(a.state, State::Idle | State::Busy) || a.child.is_none() {
            return Err(format!(
                "agent {} is {}, not idle or busy",
                a.spec.id, a.state
            ));
        }
        let from = a.state;
        self.signal(i, libc::SIGSTOP);
        self.agents[i].paused_from = Some(from);
        self.set_state(i, State::Paused);
        Ok(())
    }

    fn resume(&mut self, i: usize) -> Result<(), String> {
        let a = &mut self.agents[i];
        if a.state != State::Paused {
            return Err(format!("agent {} is {}, not paused", a.spec.id, a.state));
        }
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

    fn assign(&mut self, i: usize, task_id: String, prompt: &str) -> Result<(), String> {
        let a = &mut self.agents[i];
        if a.spec.protocol != Protocol::StreamJson {
            return Err(format!(
                "agent {} does not take stream-json tasks",
                a.spec.id
            ));
        }
        if a.state != State::Idle {
            return Err(format!("agent {} is {}, not idle", a.spec.id, a.state));
        }
        let line = serde_json::json!({
            "type": "user",
            "message": {"role": "user", "content": prompt},
        });
        let sent = a
            .child
            .as_ref()
            .is_some_and(|c| c.write_line(line.to_string().into_bytes()));
        if !sent {
            return Err(format!("agent {}: stdin is closed", a.spec.id));
        }
        a.task = Some(task_id);
        a.last_output = Instant::now();
        self.set_state(i, State::Busy);
        self.arm_watchdog(i);
        Ok(())
    }

    fn arm_watchdog(&mut self, i: usize) {
        let a = &self.agents[i];
        let (t, run) = (a.spec.health.idle_timeout, a.run);
        self.schedule(t, Timer::Watchdog { agent: i, run });
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
            Line::classify(ok),
            Line::ControlResponse {
                request_id: "r1".into(),
                error: None
            }
        );
        let bad = br#"{"type":"control_response","response":{"subtype":"error","request_id":"r2","error":"Unsupported"}}"#;
        assert_eq!(
            Line::classify(bad),
            Line::ControlResponse {
                request_id: "r2".into(),
                error: Some("Unsupported".into())
            }
        );
        assert!(matches!(
            Line::classify(br#"{"type":"result","subtype":"success"}"#),
            Line::Result(_)
        ));
        assert!(matches!(
            Line::classify(br#"{"type":"brand_new_kind"}"#),
            Line::Event(_)
        ));
        assert!(matches!(Line::classify(b"[1,2]"), Line::NotJson(_)));
        assert!(matches!(Line::classify(b"{\"type\":"), Line::NotJson(_)));
    }
}
