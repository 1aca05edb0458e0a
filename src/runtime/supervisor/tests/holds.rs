//! Accounts in the supervisor: a failed task put back and its account's
//! agents withheld from the dispatcher, the half-open probe, retries of
//! transient failures, and the failure classes of tasks the agent never
//! answered.

use serde_json::json;

use super::harness::{spec, Harness};
use crate::message::failures::{ErrorKind, HoldReason};
use crate::message::router::AgentIx;
use crate::message::schemas::{AgentState, TaskStatus};

/// A turn that ends not logged in, as claude prints it.
fn not_logged_in(h: &mut Harness, agent: usize) {
    h.init_line(agent);
    h.line(
        agent,
        json!({"type": "assistant", "message": {"model": "<synthetic>", "content": []},
               "error": "authentication_failed"}),
    );
    h.line(
        agent,
        json!({"type": "result", "subtype": "success", "is_error": true,
               "result": "Not logged in · Please run /login", "total_cost_usd": 0}),
    );
}

fn overloaded(h: &mut Harness, agent: usize) {
    h.init_line(agent);
    h.line(
        agent,
        json!({"type": "result", "subtype": "success", "is_error": true,
               "api_error_status": 529, "result": "API Error: 529 overloaded"}),
    );
}

#[test]
fn an_auth_failure_puts_the_task_back_and_withholds_the_accounts_agents() {
    let mut other = spec("c");
    other.account = "other".into();
    let mut h = Harness::ready(vec![spec("a"), spec("b"), other]);
    h.assign(0, "t1", 60_000);
    not_logged_in(&mut h, 0);
    // No answer: the task goes back; b (idle, lent) is taken back first,
    // and a, idle again, is not lent. One alert, critical, names the
    // account.
    let out = h.published();
    let alerts: Vec<_> = out
        .iter()
        .filter(|(s, _)| s.ends_with("system_alert"))
        .collect();
    assert_eq!(alerts.len(), 1);
    let crate::message::envelope::Payload::SystemAlert(al) = &alerts[0].1.payload else {
        panic!("not an alert")
    };
    assert_eq!(al.account.as_deref(), Some("default"));
    assert_eq!(al.reason, Some(HoldReason::Auth));
    assert!(al.until.is_some());
    assert!(!out
        .iter()
        .any(|(_, e)| matches!(e.payload, crate::message::envelope::Payload::TaskResult(_))));
    assert_eq!(h.dispatched(), ["not-ready 1", "requeue t1"]);
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.sup.links.holds.get(AgentIx(1)), Some(HoldReason::Auth));
    assert_eq!(h.sup.links.holds.get(AgentIx(2)), None);
    // A task the dispatcher handed b before it heard goes back too.
    h.assign(1, "t2", 60_000);
    assert_eq!(h.dispatched(), ["requeue t2"]);
    // At the hold's end (30 s) every idle agent is lent, but only the
    // first task runs (the probe); a second goes back until it is known.
    h.advance(30_000);
    assert_eq!(h.dispatched(), ["ready 0", "ready 1"]);
    h.assign(0, "t1", 60_000);
    h.assign(1, "t2", 60_000);
    assert_eq!(h.dispatched(), ["requeue t2"]);
    assert_eq!(h.state(1), AgentState::Idle);
    // Its success opens the account: every idle agent is lent again.
    h.result_line(0, "ok");
    assert_eq!(h.results()[0].status, TaskStatus::Completed);
    assert_eq!(h.dispatched(), ["ready 1", "ready 0"]);
    assert_eq!(h.sup.links.holds.get(AgentIx(1)), None);
}

#[test]
fn a_transient_failure_is_retried_after_its_delay_within_its_budget() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign_with_retries(0, "t1", 60_000, 1);
    overloaded(&mut h, 0);
    assert!(h.results().is_empty());
    assert_eq!(h.dispatched(), ["ready 0"]);
    // retry_delay 1 s, then back to the queue, same id, one attempt made.
    h.advance(999);
    assert!(h.requeued().is_empty());
    h.advance(1);
    let again = h.requeued();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].task_id.as_str(), again[0].attempts), ("t1", 1));
    // The retry fails too: its budget is spent, so it is answered.
    h.assign_task(0, again.into_iter().next().unwrap());
    overloaded(&mut h, 0);
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].status, r[0].error_kind, r[0].attempts),
        (TaskStatus::Failed, Some(ErrorKind::Overloaded), 2)
    );
}

#[test]
fn an_agent_that_dies_mid_task_is_crashed_and_a_hung_one_is_hung() {
    let mut s = spec("a");
    s.health.idle_timeout = std::time::Duration::from_millis(5_000);
    let mut h = Harness::ready(vec![s]);
    h.assign(0, "t1", 60_000);
    h.exit(0, 1);
    let r = h.results();
    assert_eq!(
        (r[0].status, r[0].error_kind, r[0].attempts),
        (TaskStatus::Failed, Some(ErrorKind::Crashed), 1)
    );
    // Restarted by policy, ready again, then silent past the watchdog.
    h.advance(100);
    h.initialize(0);
    h.assign(0, "t2", 60_000);
    h.advance(5_000);
    h.killed(0);
    let r = h.results();
    assert_eq!(r[0].error_kind, Some(ErrorKind::Hung), "{r:?}");
}
