//! Applying a reload: agents added at the end of the table, removed ones
//! retired in place, changed ones restarted with their new spec once they
//! are not busy, and the rest left alone (same process, same task).

use crate::config::{AgentSpec, Config, ConfigError, Protocol};
use crate::message::dispatcher::DispatchCmd;
use crate::message::envelope::Payload;
use crate::message::router::{alert, answer_to, AgentIx, Origin, Route};
use crate::message::schemas::{AgentState, AlertCode, ReasonCode, Severity};
use crate::runtime::reload::{plan, Plan};

use super::agent::{Agent, Reason, Takedown};
use super::Supervisor;

impl Supervisor {
    /// The config was read again: apply it, or answer every problem and
    /// change nothing.
    pub(super) fn reload(&mut self, loaded: Result<Config, ConfigError>, origin: Option<&Origin>) {
        if self.shutdown.is_some() {
            let why = "the daemon is shutting down".to_string();
            self.answer_reload(origin, AlertCode::ShuttingDown, Severity::Warning, why);
            return;
        }
        let durable = self.links.stream.is_some();
        let bad = |lines| (AlertCode::BadConfig, lines);
        let checked = loaded.map_err(|e| bad(e.lines())).and_then(|new| {
            let p = plan(&self.links.config, &new, durable).map_err(bad)?;
            // Not the file's fault: a reload a moment later works.
            self.still_stopping(&p)
                .map_err(|lines| (AlertCode::Unavailable, lines))?;
            Ok((new, p))
        });
        match checked {
            Err((code, problems)) => {
                for p in &problems {
                    log::error!("reload: {p}");
                }
                log::error!("reload refused: nothing changed");
                self.answer_reload(origin, code, Severity::Error, problems.join("\n"));
            }
            Ok((new, mut p)) => {
                self.undo_pending(&mut p);
                let summary = p.summary();
                self.links.config = new;
                self.apply_plan(p);
                log::info!("{summary}");
                self.answer_reload(origin, AlertCode::Reloaded, Severity::Info, summary);
            }
        }
    }

    /// An agent added again while the process of its removal still runs
    /// would have two processes under one id: that reload must wait.
    fn still_stopping(&self, p: &Plan) -> Result<(), Vec<String>> {
        let busy: Vec<String> = p
            .added
            .iter()
            .filter(|s| {
                self.agents
                    .iter()
                    .any(|a| a.retired && a.spec.id == s.id && a.child.is_some())
            })
            .map(|s| {
                format!(
                    "agent {}: still stopping since it was removed; reload again once it has stopped",
                    s.id
                )
            })
            .collect();
        if busy.is_empty() {
            Ok(())
        } else {
            Err(busy)
        }
    }

    /// A change back to what the agent runs already (a pending change
    /// undone before the agent was idle) is no change: nothing restarts.
    fn undo_pending(&mut self, p: &mut Plan) {
        let mut changed = Vec::new();
        for spec in std::mem::take(&mut p.changed) {
            match self.links.table.find(&spec.id) {
                Some(i) if self.agents[i.0].spec.same_run(&spec) => {
                    if self.agents[i.0].next_spec.take().is_some() {
                        log::info!("agent {}: its pending change was undone", spec.id);
                    }
                    p.unchanged += 1;
                }
                _ => changed.push(spec),
            }
        }
        p.changed = changed;
    }

    fn apply_plan(&mut self, p: Plan) {
        for id in &p.removed {
            if let Some(i) = self.links.table.find(id) {
                self.remove(i);
            }
        }
        for spec in p.changed {
            if let Some(i) = self.links.table.find(&spec.id) {
                let mut same = self.agents[i.0].spec.clone();
                same.recycle = spec.recycle;
                if same.same_run(&spec) {
                    self.new_thresholds(i, spec);
                    continue;
                }
                log::info!("agent {}: its spec changed", spec.id);
                self.agents[i.0].next_spec = Some(spec);
                // Busy: after its task. Paused: once resumed (a pause is
                // the operator's, and a restart would undo it).
                let a = &self.agents[i.0];
                if a.task.is_none() && a.state != AgentState::Paused {
                    self.apply_next_spec(i);
                }
            }
        }
        self.add(p.added);
        if let Some(subs) = &self.links.subs {
            let durable = self.links.stream.is_some();
            let _ = subs.send(self.links.table.daemon_subs(durable));
        }
    }

    /// Only agent `i`'s `recycle` thresholds changed: they apply to the
    /// session it is in, without a restart (an idle agent already past
    /// them is recycled now).
    fn new_thresholds(&mut self, i: AgentIx, spec: crate::config::AgentSpec) {
        let a = &mut self.agents[i.0];
        log::info!("agent {}: new recycle thresholds, in place", a.spec.id);
        if a.next_spec.take().is_some() {
            log::info!("agent {}: its pending change was undone", a.spec.id);
        }
        a.spec.recycle = spec.recycle;
        let due = a.spec.protocol == crate::config::Protocol::StreamJson
            && a.state == AgentState::Idle
            && a.child.is_some()
            && a.spec.recycle.due(a.session.tasks, a.session.input_tokens);
        if due {
            self.recycle(i);
        }
    }

    /// Agent `i` was removed from the config: no longer routed to, and
    /// stopped for good (its queued tasks are answered `cancelled`).
    fn remove(&mut self, i: AgentIx) {
        self.links.table.retire(i);
        let a = &mut self.agents[i.0];
        a.retired = true;
        a.next_spec = None;
        // Not announced any more: a clash over its id ends with it.
        a.also_on.clear();
        log::info!("agent {}: removed from the config: stopping it", a.spec.id);
        a.reason = Some(Reason::new(
            ReasonCode::StoppedByOperator,
            "removed from the config",
        ));
        if a.state == AgentState::Terminated {
            // Already down (and the dispatcher told why): nothing to stop.
            return;
        }
        // Its queued tasks are answered now, not once its process is gone.
        if a.spec.protocol.takes_tasks() {
            let _ = self
                .links
                .dispatch
                .send(DispatchCmd::Down(i, "removed from the config".into()));
        }
        self.stop(i, Takedown::Stop);
    }

    /// New agents: the dispatcher learns of them before anything can route
    /// to them, then they start.
    fn add(&mut self, specs: Vec<AgentSpec>) {
        if specs.is_empty() {
            return;
        }
        let types = specs.iter().map(|s| s.agent_type.clone()).collect();
        let _ = self.links.dispatch.send(DispatchCmd::Grow(types));
        let first = self.agents.len();
        self.links.holds.grow(first + specs.len());
        let (now, wall) = (self.now(), self.clock.wall_ms());
        let routes: Vec<Route> = specs.iter().map(Route::of).collect();
        for (n, spec) in specs.into_iter().enumerate() {
            let account = self.account_spec(&spec.account);
            self.links
                .accounts
                .set_agent(AgentIx(first + n), &spec.account, account, wall);
            self.agents.push(Agent::new(spec, now));
        }
        let added = self.links.table.grow(routes);
        for i in added {
            let account = self.links.accounts.account_of(i);
            self.links.accounts.mark(&self.links.holds, account);
            log::info!("agent {}: added by a reload", self.agents[i.0].spec.id);
            self.announce(i);
            self.start_pooled(i);
        }
    }

    fn account_spec(&self, name: &str) -> crate::config::AccountSpec {
        self.links
            .config
            .accounts
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Agent `i` is not busy and a reload changed its spec: the new spec
    /// replaces the old, and a running process restarts with it. A process
    /// per task (`oneshot`) just takes it for the next task; an agent that
    /// gave up (not one an operator stopped) is started again.
    pub(super) fn apply_next_spec(&mut self, i: AgentIx) {
        let wall = self.clock.wall_ms();
        let Some(spec) = self.agents[i.0].next_spec.take() else {
            return;
        };
        let account = self.account_spec(&spec.account);
        let n = self
            .links
            .accounts
            .set_agent(i, &spec.account, account, wall);
        self.links.accounts.mark(&self.links.holds, n);
        let a = &mut self.agents[i.0];
        a.spec = spec;
        let operator_stopped = a
            .reason
            .as_ref()
            .is_some_and(|r| r.code == ReasonCode::StoppedByOperator);
        match (a.state, a.child.is_some()) {
            // One-shot and idle: the next task runs the new spec.
            (AgentState::Idle, false) if a.spec.protocol == Protocol::Oneshot => self.offer(i),
            (_, true) => {
                log::info!("agent {}: restarting with its new spec", a.spec.id);
                self.routine_restart(i, "restarting with its new config".into());
            }
            (AgentState::Terminated, false) if !operator_stopped => {
                self.agents[i.0].book.reset();
                self.start(i);
            }
            // Waiting to restart (its timer starts the new spec), or
            // stopped by an operator (it stays stopped).
            _ => {}
        }
    }

    fn answer_reload(
        &self,
        origin: Option<&Origin>,
        code: AlertCode,
        severity: Severity,
        message: String,
    ) {
        let Some((origin, reply)) = origin.and_then(|o| Some((o, o.reply_to.as_ref()?))) else {
            return;
        };
        let mut env = alert(severity, code, message, None, None);
        if let Payload::SystemAlert(_) = &env.payload {
            env.metadata
                .insert("daemon_id".into(), self.links.table.daemon_id.clone());
        }
        self.links.outbox.reply(reply, &answer_to(env, origin));
    }
}
