//! Tasks that continue a claude session: taken by the agent that holds it,
//! or run after a restart with `--resume`; what claude's refusal of an
//! unknown session does; and what the dispatcher is told.

use serde_json::json;

use super::harness::{spec, Harness};
use crate::config::Protocol;
use crate::message::failures::ErrorKind;
use crate::message::schemas::{AgentState, CommandType, ReasonCode, TaskStatus};

const S: &str = "0f6a4a46-1a8e-4d4e-9d3e-2b1c5a7e9f00";

/// A whole turn of `agent` in session `sid`.
fn turn(h: &mut Harness, agent: usize, sid: &str) {
    h.init_line(agent);
    h.line(
        agent,
        json!({"type": "result", "subtype": "success", "is_error": false, "result": "ok",
               "session_id": sid, "total_cost_usd": 0.0, "usage": {"input_tokens": 5}}),
    );
}

/// The prompts written to `pid` as user messages.
fn prompts(h: &Harness, pid: u32) -> Vec<String> {
    h.written(pid)
        .iter()
        .filter(|v| v["type"] == "user")
        .map(|v| v["message"]["content"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn the_agent_holding_the_session_takes_its_task_without_a_restart() {
    let mut h = Harness::ready(vec![spec("a")]);
    let pid = h.pid(0);
    h.assign(0, "t1", 60_000);
    turn(&mut h, 0, S);
    // Answered in its session: the dispatcher hears of it after the agent
    // is offered again.
    assert_eq!(
        h.dispatched(),
        [format!("holds 0 {S}"), "ready 0".into(), "release 1".into()]
    );
    h.assign_session(0, "t2", S, 60_000);
    assert_eq!(h.state(0), AgentState::Busy);
    assert_eq!(h.pid(0), pid);
    assert_eq!(prompts(&h, pid), ["do t1", "do t2"]);
    turn(&mut h, 0, S);
    assert_eq!(h.results()[1].status, TaskStatus::Completed);
    // Answered: the dispatcher hears of it after the agent is offered again.
    assert_eq!(h.dispatched(), ["ready 0", "release 2"]);
}

#[test]
fn an_agent_in_another_session_restarts_with_resume_and_then_runs_the_task() {
    let mut h = Harness::ready(vec![spec("a")]);
    let old = h.pid(0);
    h.assign(0, "t1", 60_000);
    turn(&mut h, 0, "s-other");
    h.dispatched();
    h.assign_session(0, "t2", S, 60_000);
    // Not written to the old process: it is stopped first (stdin closed),
    // a routine restart (which health does not count against it).
    assert_eq!(h.state(0), AgentState::Stopping);
    assert_eq!(h.reason(0), Some(ReasonCode::Routine));
    assert_eq!(prompts(&h, old), ["do t1"]);
    h.exit_pid(old, 0);
    let new = h.pid(0);
    assert_ne!(new, old);
    assert_eq!(
        h.world
            .lock()
            .unwrap()
            .resumed
            .get(&new)
            .map(String::as_str),
        Some(S)
    );
    assert_eq!(h.state(0), AgentState::Initializing);
    assert_eq!(h.reason(0), Some(ReasonCode::Routine));
    // Ready: the task runs at once, without the agent being offered.
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Busy);
    assert_eq!(h.reason(0), None);
    assert_eq!(prompts(&h, new), ["do t2"]);
    let d = h.dispatched();
    assert!(!d.contains(&"ready 0".to_string()), "{d:?}");
    turn(&mut h, 0, "s-forked");
    let r = h.results();
    assert_eq!(
        (r[1].status, r[1].session_id.as_deref(), r[1].attempts),
        (TaskStatus::Completed, Some("s-forked"), 1)
    );
    assert_eq!(h.sup.agents[0].restarts, 0, "a resume is no restart");
    assert_eq!(
        h.dispatched(),
        [
            "holds 0 s-forked".to_string(),
            "ready 0".into(),
            "release 2".into()
        ]
    );
    // A later restart of its own starts fresh, not resumed.
    h.control(0, CommandType::Restart);
    h.exit(0, 0);
    let fresh = h.pid(0);
    assert!(!h.world.lock().unwrap().resumed.contains_key(&fresh));
}

#[test]
fn a_session_claude_does_not_know_fails_the_task_with_its_words_and_the_agent_starts_fresh() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign_session(0, "t1", S, 60_000);
    h.exit(0, 0);
    let resumed = h.pid(0);
    let words = format!("No conversation found with session ID: {S}");
    h.world
        .lock()
        .unwrap()
        .stderr
        .insert(resumed, vec![words.clone()]);
    h.exit_pid(resumed, 1);
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].status, r[0].error_kind, r[0].attempts),
        (TaskStatus::Failed, Some(ErrorKind::Other), 1)
    );
    assert!(r[0].errors.as_ref().unwrap().contains(&words), "{r:?}");
    // Started again at once, fresh, and not counted against it.
    let fresh = h.pid(0);
    assert_ne!(fresh, resumed);
    assert!(!h.world.lock().unwrap().resumed.contains_key(&fresh));
    assert_eq!(h.state(0), AgentState::Initializing);
    assert_eq!(h.sup.agents[0].restarts, 0);
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Idle);
}

#[test]
fn a_resumed_process_that_dies_otherwise_fails_the_task_as_a_crash() {
    let mut s = spec("a");
    s.restart.initial_delay = std::time::Duration::from_millis(100);
    let mut h = Harness::ready(vec![s]);
    h.assign_session(0, "t1", S, 60_000);
    h.exit(0, 0);
    h.killed(0);
    let r = h.results();
    assert_eq!(
        (r[0].status, r[0].error_kind),
        (TaskStatus::Failed, Some(ErrorKind::Crashed))
    );
    // That one goes through the restart policy, fresh.
    assert_eq!(h.state(0), AgentState::Error);
    h.advance(100);
    let fresh = h.pid(0);
    assert!(!h.world.lock().unwrap().resumed.contains_key(&fresh));
}

#[test]
fn the_deadline_of_a_task_waiting_for_its_resume_still_holds() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign_session(0, "t1", S, 1_000);
    h.exit(0, 0);
    h.advance(1_000);
    let r = h.results();
    assert_eq!(
        (r[0].status, r[0].error_kind),
        (TaskStatus::Timeout, Some(ErrorKind::Timeout))
    );
    // The process started in that session must not serve other tasks
    // (they would inherit its conversation): once ready, it is restarted
    // fresh before the agent is offered.
    let resumed = h.pid(0);
    assert!(h.world.lock().unwrap().resumed.contains_key(&resumed));
    h.dispatched();
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Stopping);
    assert!(!h.dispatched().contains(&"ready 0".to_string()));
    h.exit_pid(resumed, 0);
    let fresh = h.pid(0);
    assert!(!h.world.lock().unwrap().resumed.contains_key(&fresh));
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Idle);
    assert!(h.dispatched().contains(&"ready 0".to_string()));
    assert_eq!(h.sup.agents[0].restarts, 0);
    // Timed out before the old process was even gone: the new one starts
    // fresh at once.
    h.assign_session(0, "t2", S, 1_000);
    h.advance(1_000);
    h.exit(0, 0);
    let fresh = h.pid(0);
    assert!(!h.world.lock().unwrap().resumed.contains_key(&fresh));
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Idle);
}

#[test]
fn stopping_an_agent_on_its_way_to_resume_cancels_the_task() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign_session(0, "t1", S, 60_000);
    h.control(0, CommandType::Stop);
    h.exit(0, 0);
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, TaskStatus::Cancelled);
    assert_eq!(h.state(0), AgentState::Terminated);
    // Stopped while the resumed process started: the same.
    h.control(0, CommandType::Start);
    h.initialize(0);
    h.assign_session(0, "t2", S, 60_000);
    h.exit(0, 0);
    h.control(0, CommandType::Stop);
    h.exit(0, 143);
    let r = h.results();
    assert_eq!((r.len(), r[0].status), (1, TaskStatus::Cancelled));
}

#[test]
fn a_one_shot_task_of_a_session_runs_with_resume_and_an_unknown_one_is_not_retried() {
    let mut s = spec("a");
    s.protocol = Protocol::Oneshot;
    let mut h = Harness::new(vec![s]);
    let mut task = h.task(0, "t1", 60_000, 3);
    task.session = Some(S.into());
    h.assign_task(0, task);
    let pid = h.pid(0);
    assert_eq!(
        h.world
            .lock()
            .unwrap()
            .resumed
            .get(&pid)
            .map(String::as_str),
        Some(S)
    );
    let words = format!("No conversation found with session ID: {S}");
    h.world
        .lock()
        .unwrap()
        .stderr
        .insert(pid, vec![words.clone()]);
    h.exit_pid(pid, 1);
    let r = h.results();
    assert_eq!(r.len(), 1, "answered, not retried: {r:?}");
    assert_eq!(
        (r[0].status, r[0].error_kind),
        (TaskStatus::Failed, Some(ErrorKind::Other))
    );
    assert!(r[0].errors.as_ref().unwrap().contains(&words));
    assert_eq!(h.state(0), AgentState::Idle);
}

#[test]
fn the_session_is_known_from_the_first_turns_init_line() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 60_000);
    h.line(
        0,
        json!({"type": "system", "subtype": "init", "session_id": S}),
    );
    assert_eq!(h.dispatched(), [format!("holds 0 {S}")]);
    let st = h.sup.report(None).agents.remove(0);
    let session = st.session.expect("a session while the first task runs");
    assert_eq!((session.session_id.as_str(), session.tasks), (S, 0));
    // Its result names the same session: nothing new to tell.
    h.line(
        0,
        json!({"type": "result", "subtype": "success", "is_error": false, "result": "ok",
               "session_id": S, "usage": {"input_tokens": 5}}),
    );
    assert_eq!(h.dispatched(), ["ready 0", "release 1"]);
}
