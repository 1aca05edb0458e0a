//! Gathering the daemons' health reports, for `status` and `health`: one
//! request, answers from every daemon (perhaps in parts), joined per daemon.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::client::{self, refusal, Client};
use crate::config::names::check_token;
use crate::error::SystemError;
use crate::message::envelope::{Envelope, MessageType, Payload};
use crate::message::router::{agent_subject, system_subject};
use crate::message::schemas::{HealthReport, SystemHealthCheck};
use crate::transport::TransportKind;

/// Whom `--expect` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expect {
    Count(usize),
    Ids(Vec<String>),
}

impl Expect {
    pub(super) fn parse(text: &str) -> Result<Expect, SystemError> {
        if let Ok(n) = text.parse::<usize>() {
            return if n == 0 {
                Err(SystemError::Usage(
                    "--expect 0: expect at least one daemon".into(),
                ))
            } else {
                Ok(Expect::Count(n))
            };
        }
        let ids: Vec<String> = text.split(',').map(|s| s.trim().to_string()).collect();
        for id in &ids {
            check_token(id)
                .map_err(|why| SystemError::Usage(format!("--expect: daemon id {id:?} {why}")))?;
        }
        Ok(Expect::Ids(ids))
    }

    /// Whether the daemons in `answered` are all that is expected.
    pub(super) fn met(&self, answered: &[&str]) -> bool {
        match self {
            Expect::Count(n) => answered.len() >= *n,
            Expect::Ids(ids) => ids.iter().all(|id| answered.contains(&id.as_str())),
        }
    }

    /// What is missing from `answered`, for the line.
    pub(super) fn missing(&self, answered: &[&str]) -> Option<String> {
        match self {
            Expect::Count(n) if answered.len() < *n => Some(format!(
                "{} of {n} expected daemons answered",
                answered.len()
            )),
            Expect::Ids(ids) => {
                let gone: Vec<&str> = ids
                    .iter()
                    .map(String::as_str)
                    .filter(|id| !answered.contains(id))
                    .collect();
                (!gone.is_empty()).then(|| format!("daemon {} did not answer", gone.join(", ")))
            }
            Expect::Count(_) => None,
        }
    }
}

/// Asks every reachable daemon (or the one running `agent`) for its report.
pub(super) fn reports(
    client: &mut Client,
    agent: Option<&str>,
    within: Duration,
    expect: Option<&Expect>,
) -> Result<Vec<HealthReport>, SystemError> {
    let (subject, payload) = match agent {
        Some(id) => (
            agent_subject("claude", id, MessageType::SystemHealthCheck),
            SystemHealthCheck {
                agent_id: Some(id.to_string()),
                report: None,
            },
        ),
        None => (
            system_subject("all", "status"),
            SystemHealthCheck::default(),
        ),
    };
    let mut env = Envelope::new(Payload::SystemHealthCheck(payload));
    // Over NATS every daemon answers and nothing says how many there are:
    // after an answer, wait a little for more. One daemon (the socket, or
    // the one that runs `agent`) answers once, perhaps in parts.
    let several = client.kind() == TransportKind::Nats && agent.is_none();
    let deadline = Instant::now() + within;
    let reply = client.request(&subject, &mut env)?;
    let left = deadline.saturating_duration_since(Instant::now());
    client.flush_within(left)?;
    // By daemon process: two that share a daemon_id by mistake both count.
    let mut parts: BTreeMap<(String, Option<String>), Parts> = BTreeMap::new();
    let mut until = deadline;
    let mut unreadable = 0usize;
    while let Some(m) = client.next_until(until)? {
        if m.subject != reply {
            continue;
        }
        if m.no_responders {
            if parts.is_empty() {
                return Err(SystemError::NoResponders { subject });
            }
            continue;
        }
        // One answer that cannot be read (a daemon of another version, a
        // broken one) is left out, said once; the others still count.
        let answer = match client::decode(&m) {
            Ok(a) => a,
            Err(e) => {
                unreadable += 1;
                crate::cli::notice(&format!("an answer was left out: {e}"));
                continue;
            }
        };
        if let Some(err) = refusal(&answer) {
            return Err(err);
        }
        let Payload::SystemHealthCheck(SystemHealthCheck {
            report: Some(r), ..
        }) = answer.payload
        else {
            continue;
        };
        let key = (r.daemon_id.clone(), r.instance.clone());
        parts.entry(key).or_default().add(r);
        // With daemons expected, wait for them all (until the deadline).
        let answered: Vec<&str> = parts.keys().map(|(d, _)| d.as_str()).collect();
        let complete =
            parts.values().all(Parts::complete) && expect.is_none_or(|e| e.met(&answered));
        until = match (complete, several) {
            (true, false) => break,
            (true, true) => (Instant::now() + client::MORE_ANSWERS).min(deadline),
            (false, _) => deadline,
        };
    }
    if parts.is_empty() && unreadable > 0 {
        return Err(SystemError::Unanswered(format!(
            "no readable answer within {} ms ({unreadable} could not be read; {})",
            within.as_millis(),
            client.describe()
        )));
    }
    if parts.is_empty() {
        return Err(SystemError::Unanswered(format!(
            "no daemon answered within {} ms ({})",
            within.as_millis(),
            client.describe()
        )));
    }
    parts.into_values().map(Parts::whole).collect()
}

/// The parts of one daemon's report, as they arrive.
#[derive(Default)]
struct Parts {
    got: BTreeMap<u32, HealthReport>,
    total: u32,
}

impl Parts {
    fn add(&mut self, r: HealthReport) {
        self.total = r.parts.unwrap_or(1);
        self.got.insert(r.part.unwrap_or(1), r);
    }

    fn complete(&self) -> bool {
        u32::try_from(self.got.len()).is_ok_and(|n| n >= self.total)
    }

    /// The report, its parts joined in order.
    fn whole(self) -> Result<HealthReport, SystemError> {
        if !self.complete() {
            let daemon = self
                .got
                .values()
                .next()
                .map(|r| r.daemon_id.clone())
                .unwrap_or_default();
            return Err(SystemError::Unanswered(format!(
                "daemon {daemon} answered with {} of the {} parts of its report in time",
                self.got.len(),
                self.total
            )));
        }
        let mut parts = self.got.into_values();
        let mut whole = parts
            .next()
            .ok_or_else(|| SystemError::NoAnswer("an empty report".into()))?;
        for p in parts {
            whole.agents.extend(p.agents);
        }
        whole.part = None;
        whole.parts = None;
        Ok(whole)
    }
}
