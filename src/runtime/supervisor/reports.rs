//! What the supervisor says about agents: an `agent_status` on every
//! transition, and answers to status, health and control requests, sent
//! straight to the request's reply subject.

use super::Supervisor;
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::{alert, answer_to, AgentIx, Origin};
use crate::message::schemas::{
    AgentState, AgentStatus, AlertCode, HealthReport, LinkState, SessionView, Severity,
    SystemHealthCheck,
};
use crate::message::stream_view::StreamLink;

impl Supervisor {
    /// The status of agent `i`, as published on a transition (`previous`
    /// set) or reported on request. Only a report reads memory and CPU from
    /// `/proc`: a transition is on the restart path and must stay cheap.
    pub(super) fn status(&self, i: AgentIx, previous: Option<AgentState>) -> AgentStatus {
        let a = &self.agents[i.0];
        let now = self.now();
        AgentStatus {
            agent_id: a.spec.id.clone(),
            status: Some(a.state),
            previous_status: previous,
            uptime_seconds: a.up_since.map_or(0.0, |t| {
                (now.saturating_duration_since(t).as_millis() as f64) / 1000.0
            }),
            pid: a.child.as_ref().map(|c| c.pid()),
            restarts: a.restarts,
            resource_usage: match (&a.child, previous) {
                (Some(c), None) => c.resource_usage(),
                _ => None,
            },
            agent_type: Some(a.spec.agent_type.clone()),
            daemon_id: Some(self.links.table.daemon_id.clone()),
            tasks_completed: a.tasks_done,
            tasks_failed: a.tasks_failed,
            total_cost_usd: a.cost_usd,
            reason: a.reason.as_ref().map(|r| r.text.clone()),
            reason_code: a.reason.as_ref().map(|r| r.code),
            also_on: (!a.also_on.is_empty()).then(|| a.also_on.keys().cloned().collect()),
            // Like memory and CPU, only in a report: a transition is on
            // every task's path.
            account: if previous.is_none() && a.spec.protocol.takes_tasks() {
                self.links
                    .accounts
                    .view(self.links.accounts.account_of(i), self.clock.wall_ms())
            } else {
                None
            },
            task_counts: if previous.is_none() {
                a.outcomes.clone()
            } else {
                Vec::new()
            },
            session: match (&a.session.id, previous, &a.child) {
                (Some(id), None, Some(_)) => Some(SessionView {
                    session_id: id.clone(),
                    tasks: a.session.tasks,
                    input_tokens: a.session.input_tokens,
                }),
                _ => None,
            },
        }
    }

    /// Publishes agent `i`'s move from `from` on its `agent_status` subject.
    pub(super) fn publish_status(&self, i: AgentIx, from: AgentState) {
        let status = self.status(i, Some(from));
        self.publish(
            i,
            MessageType::AgentStatus,
            &Envelope::new(Payload::AgentStatus(status)),
        );
    }

    /// This daemon's report on agent `agent`, or on all of them.
    pub(super) fn report(&self, agent: Option<AgentIx>) -> HealthReport {
        let agents = match agent {
            Some(i) => vec![self.status(i, None)],
            None => self.live().map(|i| self.status(i, None)).collect(),
        };
        HealthReport {
            daemon_id: self.links.table.daemon_id.clone(),
            instance: Some(self.links.table.instance.clone()),
            uptime_seconds: (self
                .now()
                .saturating_duration_since(self.started)
                .as_millis() as f64)
                / 1000.0,
            nats: self.links.nats.get(),
            queued: self.links.queued.load(std::sync::atomic::Ordering::Relaxed),
            queue_capacity: self.links.queue_capacity,
            agents,
            // A report on one agent speaks of its account only.
            accounts: match agent {
                Some(i) if self.agents[i.0].spec.protocol.takes_tasks() => self
                    .links
                    .accounts
                    .view(self.links.accounts.account_of(i), self.clock.wall_ms())
                    .into_iter()
                    .collect(),
                Some(_) => Vec::new(),
                None => self.links.accounts.views(
                    &self
                        .agents
                        .iter()
                        .map(|a| a.spec.protocol.takes_tasks() && !a.retired)
                        .collect::<Vec<_>>(),
                    self.clock.wall_ms(),
                ),
            },
            jetstream: self.links.stream.as_ref().map(|(name, state)| {
                let mut view = state.view(name);
                // NATS itself is down: JetStream cannot be reached, whatever
                // the last poll found.
                let link = self.links.nats.get();
                if link != LinkState::Connected && view.state == StreamLink::Ok {
                    view.state = StreamLink::Unreachable;
                    view.error = Some(format!("NATS is {}", link.as_str()));
                }
                view
            }),
            unrun: self.links.unrun.counts(),
            part: None,
            parts: None,
        }
    }

    /// Answers a report request: one agent's `agent_status` when
    /// `one_status`, else a `system_health_check` carrying the report.
    pub(super) fn answer_report(&self, agent: Option<AgentIx>, one_status: bool, origin: &Origin) {
        let Some(reply) = &origin.reply_to else {
            return;
        };
        let report = self.report(agent);
        if one_status {
            let Some(status) = report.agents.into_iter().next() else {
                return;
            };
            let env = Envelope::new(Payload::AgentStatus(status));
            self.links.outbox.reply(reply, &answer_to(env, origin));
            return;
        }
        let agent_id = agent.map(|i| self.agents[i.0].spec.id.clone());
        let envelope = |report: HealthReport| {
            answer_to(
                Envelope::new(Payload::SystemHealthCheck(SystemHealthCheck {
                    agent_id: agent_id.clone(),
                    report: Some(report),
                })),
                origin,
            )
        };
        // A fleet of thousands of agents does not fit one message: it goes
        // in parts, each within the largest message that can go out.
        let limit = self.wire_limit();
        for part in report.split(limit, |r| envelope(r.clone()).encode().len()) {
            self.links.outbox.reply(reply, &envelope(part));
        }
    }

    /// Answers a control request: the agent's status after it, or why it
    /// was refused.
    pub(super) fn answer_control(
        &self,
        agent: AgentIx,
        result: Result<(), String>,
        origin: &Origin,
    ) {
        let Some(reply) = &origin.reply_to else {
            return;
        };
        let env = match result {
            Ok(()) => Envelope::new(Payload::AgentStatus(self.status(agent, None))),
            Err(why) => alert(
                Severity::Error,
                AlertCode::Refused,
                why,
                Some(&self.agents[agent.0].spec.id),
                None,
            ),
        };
        self.links.outbox.reply(reply, &answer_to(env, origin));
    }
}
