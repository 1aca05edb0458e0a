//! The supervisor: the one thread that owns the agent table.
//!
//! It loops on a single `select_biased!` over signals, events (child output
//! and exits, health verdicts, commands, task assignments) and the earliest
//! pending timer. Its concerns are split by file: [`lifecycle`] (starting,
//! stopping, exits and the restart policy), [`control`] (an operator's
//! commands), [`tasks`] (running tasks and answering them), [`sessions`]
//! (tasks that continue a claude session), [`holds`] (accounts and
//! retries), [`reload`], [`reports`] (statuses for transitions and
//! requests), [`timers`] (the timer map and the clock) and [`agent`] (the
//! table's rows). Processes are reached only through the `Spawner` and
//! `ChildHandle` seam, and time only through a `Clock`, so the whole state
//! machine is unit-tested without a process or a sleep ([`tests`]).
//!
//! Every event carries the agent's index and the run number of the process
//! that produced it; events from an earlier run of the same agent are
//! dropped, so a late line or exit can never be taken for the current one.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, Receiver, Sender};

use crate::config::AgentSpec;
use crate::message::dispatcher::{DispatchCmd, Task};
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::{alert, AgentIx, RoutingTable};
use crate::message::schemas::{AgentRegistration, AgentState, AlertCode, ReasonCode, Severity};
use crate::runtime::accounts::{Accounts, HoldBoard};
use crate::runtime::backoff::Jitter;
use crate::runtime::events::{Command, Event, ReportKind};
use crate::runtime::health_monitor::HealthCmd;
use crate::runtime::process::{signal_name, ChildMsg, Spawner};
use crate::runtime::tracker::TrackCmd;
use crate::transport::health_check::NatsState;
use crate::transport::hub::Outbox;

use self::agent::{Agent, Takedown};
use self::timers::{Clock, Timer, Timers};

mod agent;
mod control;
mod holds;
mod lifecycle;
mod reload;
mod reports;
mod sessions;
mod tasks;
#[cfg(test)]
mod tests;
pub(crate) mod timers;

/// After closing a stream-json agent's stdin, how long it gets to exit by
/// itself before SIGTERM (at most; never more than a quarter of its
/// `stop_timeout_ms`).
const STDIN_GRACE: Duration = Duration::from_millis(500);

/// How long an agent gets to end a timed-out task after `interrupt` (or a
/// one-shot process after SIGTERM) before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

/// How long a one-shot process may linger after printing its `result`
/// before it is stopped (claude sometimes never exits after it).
const LINGER_AFTER_RESULT: Duration = Duration::from_secs(2);

/// While an agent id also runs on another daemon, both announce it this
/// often; a clash not heard of again within [`CLAIM_EXPIRY`] is over.
const CLAIM_REFRESH: Duration = Duration::from_secs(30);
const CLAIM_EXPIRY: Duration = Duration::from_secs(95);

/// How the daemon's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Stopped gracefully.
    Graceful,
    /// A second signal forced the stop; 128 + this signal.
    Forced(i32),
}

/// What the supervisor talks to besides its children.
pub(crate) struct Links {
    pub table: Arc<RoutingTable>,
    pub outbox: Outbox,
    pub dispatch: Sender<DispatchCmd>,
    pub health: Sender<HealthCmd>,
    pub tracker: Sender<TrackCmd>,
    pub nats: Arc<NatsState>,
    pub queued: Arc<AtomicUsize>,
    pub queue_capacity: usize,
    pub max_message_size: usize,
    /// The accounts the agents draw on (the supervisor owns them).
    pub accounts: Accounts,
    /// Which agents' accounts are held, for the dispatcher's answers.
    pub holds: Arc<HoldBoard>,
    /// The wait before a task's first retry (doubled for each one after).
    pub retry_delay: Duration,
    /// Durable mode: the pump, which stores the results of tasks from the
    /// stream before they are published.
    pub pump: Option<Sender<crate::transport::jetstream::JsCmd>>,
    /// Durable mode: the tasks stream's name, and how JetStream is doing.
    pub stream: Option<(String, Arc<crate::transport::jetstream::JsState>)>,
    /// Where each task's envelopes are written, when transcripts are on.
    pub transcripts: Option<crate::runtime::transcripts::Transcripts>,
    /// Tasks answered before they ran, counted by the dispatcher's sink.
    pub unrun: crate::runtime::inbound::Unrun,
    /// The config in force: a reload is compared with it.
    pub config: crate::config::Config,
    /// With NATS: where the subscriptions a reload needs are sent.
    pub subs: Option<Sender<Vec<crate::message::router::Sub>>>,
}

pub(crate) struct Supervisor {
    agents: Vec<Agent>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    signals: Receiver<i32>,
    links: Links,
    spawner: Box<dyn Spawner>,
    clock: Box<dyn Clock>,
    timers: Timers,
    jitter: Jitter,
    shutdown: Option<Outcome>,
    /// Until the dispatcher says it has closed, assignments may still come.
    dispatcher_open: bool,
    started: Instant,
    /// Starts handed to the spawner pool and not answered yet.
    pending_spawns: usize,
    /// Whether a [`Timer::Claims`] is pending.
    claims_timer: bool,
    /// Tasks waiting out their retry delay, by sequence number.
    retrying: std::collections::HashMap<u64, (AgentIx, Task)>,
    /// Whether a [`Timer::SaveSpend`] is pending.
    spend_timer: bool,
    /// Tasks of claude sessions answered while handling the current event:
    /// the dispatcher hears of them after it (see `publish_result`).
    released: std::cell::RefCell<Vec<u64>>,
}

impl Supervisor {
    /// A supervisor for `specs` (in the routing table's order). Nothing
    /// starts until [`Supervisor::run`] (or, in tests, `start_all`).
    pub(crate) fn new(
        specs: Vec<AgentSpec>,
        events: (Sender<Event>, Receiver<Event>),
        signals: Receiver<i32>,
        links: Links,
        spawner: Box<dyn Spawner>,
        clock: Box<dyn Clock>,
    ) -> Self {
        let now = clock.now();
        Supervisor {
            agents: specs.into_iter().map(|s| Agent::new(s, now)).collect(),
            events_tx: events.0,
            events: events.1,
            signals,
            links,
            spawner,
            clock,
            timers: Timers::default(),
            jitter: Jitter::seeded(),
            shutdown: None,
            dispatcher_open: true,
            claims_timer: false,
            started: now,
            pending_spawns: 0,
            retrying: std::collections::HashMap::new(),
            spend_timer: false,
            released: Default::default(),
        }
    }

    /// Starts every agent and supervises them until a signal (or a
    /// `shutdown` command) stops the daemon and every process is gone.
    pub(crate) fn run(mut self) -> Outcome {
        self.start_all();
        log::info!("supervising {} agents", self.agents.len());
        loop {
            if let Some(outcome) = self.finished() {
                log::info!("all agents stopped");
                return outcome;
            }
            let timer = self.timers.next().map_or_else(never, at);
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
            self.release_sessions();
        }
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn indexes(&self) -> impl Iterator<Item = AgentIx> {
        (0..self.agents.len()).map(AgentIx)
    }

    /// Every agent a reload has not removed, and removed ones still
    /// stopping (they show as `stopping` until their process is gone).
    fn live(&self) -> impl Iterator<Item = AgentIx> + '_ {
        self.indexes().filter(|i| {
            let a = &self.agents[i.0];
            !a.retired || a.child.is_some()
        })
    }

    /// Announces every agent and starts them all at once (the spawner pool
    /// execs them side by side).
    fn start_all(&mut self) {
        let (now, wall) = (self.now(), self.clock.wall_ms());
        for change in self.links.accounts.at_start(now, wall) {
            let account = match &change {
                crate::runtime::accounts::Change::Held { account, .. } => *account,
                _ => continue,
            };
            let first = self.links.accounts.agents_of(account).next();
            if let Some(i) = first {
                self.apply(i, change);
            }
        }
        for i in self.indexes().collect::<Vec<_>>() {
            self.announce(i);
            self.start_pooled(i);
        }
    }

    /// Publishes agent `i`'s `agent_registration`: where it runs. Another
    /// daemon with the same id hears it and reports the clash.
    fn announce(&self, i: AgentIx) {
        let a = &self.agents[i.0];
        let reg = Envelope::new(Payload::AgentRegistration(AgentRegistration {
            agent_id: a.spec.id.clone(),
            agent_type: a.spec.agent_type.clone(),
            daemon_id: self.links.table.daemon_id.clone(),
            protocol: a.spec.protocol.as_str().into(),
        }));
        self.publish(i, MessageType::AgentRegistration, &reg);
    }

    /// Daemon `daemon` announced an agent with agent `i`'s id: a fault of
    /// the deployment (one config on two hosts, say). A task to the id
    /// still runs once (its subjects are a queue group), but which daemon
    /// runs it is NATS's choice: `status` and `health` say so while both
    /// run. The first time, our own announcement goes out again so that the
    /// other side learns of it too; then both announce theirs every
    /// [`CLAIM_REFRESH`], and a claim not heard again within
    /// [`CLAIM_EXPIRY`] (the other daemon stopped, or was fixed) is over.
    fn peer_claims(&mut self, i: AgentIx, daemon: String) {
        let now = self.now();
        let a = &mut self.agents[i.0];
        if a.also_on.insert(daemon.clone(), now).is_some() {
            return;
        }
        let message = format!(
            "agent {} also runs on daemon {daemon}: a task to it runs on only one of them; give each daemon its own agent ids",
            a.spec.id
        );
        log::error!("ALERT {message}");
        let mut env = alert(
            Severity::Critical,
            AlertCode::DuplicateAgent,
            message,
            Some(&a.spec.id),
            None,
        );
        env.source_agent_id = Some(a.spec.id.clone());
        self.publish(i, MessageType::SystemAlert, &env);
        self.announce(i);
        if !self.claims_timer {
            self.claims_timer = true;
            self.schedule(CLAIM_REFRESH, Timer::Claims);
        }
    }

    /// Every [`CLAIM_REFRESH`] while a clash lasts.
    fn refresh_claims(&mut self) {
        let now = self.now();
        let mut any = false;
        for i in 0..self.agents.len() {
            let a = &mut self.agents[i];
            if a.also_on.is_empty() {
                continue;
            }
            let before = a.also_on.len();
            let id = a.spec.id.clone();
            a.also_on.retain(|daemon, heard| {
                let live = now.saturating_duration_since(*heard) < CLAIM_EXPIRY;
                if !live {
                    log::warn!(
                        "agent {id}: daemon {daemon} has not announced it for {} s: no longer a clash",
                        CLAIM_EXPIRY.as_secs()
                    );
                }
                live
            });
            let (left, state) = (a.also_on.len(), a.state);
            if left < before {
                self.publish_status(AgentIx(i), state);
            }
            if left > 0 {
                any = true;
                self.announce(AgentIx(i));
            }
        }
        self.claims_timer = any;
        if any {
            self.schedule(CLAIM_REFRESH, Timer::Claims);
        }
    }

    /// The outcome, once shutting down is complete: no process left, no
    /// spawn outstanding, and nothing more to come from the dispatcher.
    fn finished(&mut self) -> Option<Outcome> {
        let outcome = self.shutdown?;
        let idle = self.pending_spawns == 0 && self.agents.iter().all(|a| a.child.is_none());
        if !idle || self.dispatcher_open {
            return None;
        }
        // Assignments still in the channel (after a dispatcher that never
        // said it closed) get their answer too.
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Assign(i, task) = ev {
                self.assign(i, *task);
            }
        }
        if self.spend_timer {
            self.save_spend();
        }
        Some(outcome)
    }

    fn on_signal(&mut self, sig: i32) {
        let name = signal_name(sig);
        if sig == libc::SIGHUP {
            if self.shutdown.is_some() {
                log::info!("SIGHUP while stopping: no reload");
            } else {
                log::info!("SIGHUP: reading {} again", self.links.config.path.display());
                crate::runtime::reload::load_later(
                    self.links.config.path.clone(),
                    self.events_tx.clone(),
                    None,
                );
            }
            return;
        }
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
        // The dispatcher answers what it holds `cancelled` and then says it
        // has closed; assignments it made before that are answered
        // `cancelled` as they arrive. Nobody waits for anybody.
        if self.links.dispatch.send(DispatchCmd::Shutdown).is_err() {
            self.dispatcher_open = false;
        }
        self.timers
            .cancel(|t| matches!(t, Timer::Restart(_) | Timer::Retry { .. }));
        let mut waiting: Vec<(AgentIx, Task)> = self.retrying.drain().map(|(_, t)| t).collect();
        waiting.sort_by_key(|(_, t)| t.seq);
        for (i, task) in waiting {
            self.answer_unstarted(
                i,
                &task,
                crate::message::schemas::TaskStatus::Cancelled,
                "the daemon shut down before the task's retry".into(),
            );
        }
        for i in self.indexes().collect::<Vec<_>>() {
            self.stop(i, Takedown::Stop);
        }
        // Past every stop timeout, whatever is left is killed; this only
        // matters if a Kill timer could not do it.
        let now = self.now();
        self.timers
            .after(now, wait + Duration::from_secs(1), Timer::ShutdownDeadline);
    }

    fn kill_all(&mut self) {
        for a in &self.agents {
            if let Some(c) = &a.child {
                let _ = c.signal_group(libc::SIGKILL);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Child { agent, run, msg } => {
                if self.is_current(agent, run) {
                    match msg {
                        ChildMsg::Line(line) => self.on_line(agent, line),
                        ChildMsg::StdoutClosed => self.on_stdout_closed(agent),
                        ChildMsg::Exited(status) => self.on_exit(agent, status),
                    }
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
                let a = &self.agents[agent.0];
                let wanted = a.run == run
                    && a.state == AgentState::Initializing
                    && a.child.is_none()
                    && self.shutdown.is_none();
                match result {
                    Ok(child) if !wanted => {
                        // Stopped (or shut down) while it was being spawned.
                        let _ = child.signal_group(libc::SIGKILL);
                    }
                    _ if !wanted => {}
                    result => self.attach(agent, run, result),
                }
            }
            Event::DispatcherClosed => self.dispatcher_open = false,
        }
    }

    fn is_current(&self, agent: AgentIx, run: u64) -> bool {
        self.agents
            .get(agent.0)
            .is_some_and(|a| a.run == run && a.child.is_some())
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        while let Some(timer) = self.timers.pop_due(now) {
            self.on_timer(timer);
        }
    }

    fn schedule(&mut self, after: Duration, timer: Timer) {
        let now = self.now();
        self.timers.after(now, after, timer);
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Restart(i) => {
                if self.shutdown.is_none() && self.agents[i.0].state == AgentState::Error {
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
                    let a = &self.agents[agent.0];
                    log::warn!(
                        "agent {}: still running {} ms after the stop began: SIGKILL",
                        a.spec.id,
                        a.spec.stop_timeout.as_millis()
                    );
                    self.signal(agent, libc::SIGKILL);
                }
            }
            Timer::Startup { agent, run } => {
                let a = &self.agents[agent.0];
                if self.is_current(agent, run) && a.state == AgentState::Initializing {
                    log::error!(
                        "agent {}: no answer to initialize within {} ms",
                        a.spec.id,
                        a.spec.startup_timeout.as_millis()
                    );
                    self.fail(agent, ReasonCode::StartupTimeout);
                }
            }
            Timer::Watchdog { agent, generation } => self.check_watchdog(agent, generation),
            Timer::Deadline { agent, seq } => {
                if self.running_seq(agent) == Some(seq) {
                    self.task_timed_out(agent);
                } else if self.agents[agent.0]
                    .resuming
                    .as_ref()
                    .is_some_and(|t| t.seq == seq)
                {
                    self.resume_timed_out(agent);
                }
            }
            Timer::InterruptGrace { agent, seq } => {
                if self.running_seq(agent) == Some(seq) {
                    log::warn!(
                        "agent {}: timed-out task did not stop within {} ms: killing",
                        self.agents[agent.0].spec.id,
                        INTERRUPT_GRACE.as_millis()
                    );
                    self.fail(agent, ReasonCode::TaskDidNotStop);
                }
            }
            Timer::Linger { agent, run } => {
                if self.is_current(agent, run) && self.agents[agent.0].result_seen {
                    log::warn!(
                        "agent {}: still running {} ms after its result: stopping it",
                        self.agents[agent.0].spec.id,
                        LINGER_AFTER_RESULT.as_millis()
                    );
                    self.send_term(agent);
                    let t = self.agents[agent.0].spec.stop_timeout;
                    self.schedule(t, Timer::Kill { agent, run });
                }
            }
            Timer::Claims => self.refresh_claims(),
            Timer::HoldEnds {
                account,
                generation,
            } => self.hold_ends(account, generation),
            Timer::Retry { seq } => self.retry_now(seq),
            Timer::SaveSpend => self.save_spend(),
            Timer::ShutdownDeadline => {
                if self.agents.iter().any(|a| a.child.is_some()) {
                    log::warn!("shutdown deadline passed: killing what is left");
                    self.kill_all();
                }
                if self.dispatcher_open {
                    log::warn!("the dispatcher did not close in time");
                    self.dispatcher_open = false;
                }
            }
        }
    }

    /// A request from a transport, answered on its reply subject.
    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Shutdown => {
                if self.shutdown.is_none() {
                    self.begin_shutdown("shutdown requested");
                }
            }
            Command::Report {
                agent,
                kind,
                origin,
            } => self.answer_report(agent, kind == ReportKind::AgentStatus, &origin),
            Command::PeerClaims { agent, daemon } => self.peer_claims(agent, daemon),
            Command::ResumeAccount { account, origin } => self.resume_account(&account, &origin),
            Command::Reload { loaded, origin } => self.reload(*loaded, origin.as_ref()),
            Command::Control { agent, op, origin } => {
                let r = if self.shutdown.is_some() {
                    Err("the daemon is shutting down".to_string())
                } else {
                    self.control(agent, op)
                };
                self.answer_control(agent, r, &origin);
            }
        }
    }
}
