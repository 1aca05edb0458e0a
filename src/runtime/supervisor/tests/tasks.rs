//! Tasks: their run to a result, progress, deadlines, the watchdog,
//! requeues, one-shot processes, and stale events.

use std::time::Duration;

use serde_json::json;

use super::harness::{spec, Harness};
use crate::config::Protocol;
use crate::message::envelope::Payload;
use crate::message::schemas::{AgentState, CommandType, ReasonCode, TaskStatus};
use crate::runtime::claude::Line;
use crate::runtime::process::ChildMsg;

#[test]
fn a_busy_agent_stopped_gets_sigterm_at_once_and_its_task_is_cancelled() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 60_000);
    assert_eq!(h.state(0), AgentState::Busy);
    let pid = h.pid(0);
    h.control(0, CommandType::Stop);
    assert_eq!(h.signals(pid), [libc::SIGTERM, libc::SIGCONT]);
    h.exit(0, 143);
    let results = h.results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, TaskStatus::Cancelled);
    assert!(results[0].errors.as_ref().unwrap()[0].starts_with("the agent was stopped"));
}

#[test]
fn a_result_that_comes_while_stopping_answers_the_task_once() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 60_000);
    h.control(0, CommandType::Stop);
    h.result_line(0, "done anyway");
    h.exit(0, 0);
    let results = h.results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].status, TaskStatus::Completed);
    assert_eq!(results[0].result.as_deref(), Some("done anyway"));
    assert_eq!(h.state(0), AgentState::Terminated);
}

#[test]
fn a_task_runs_to_its_result_and_the_agent_is_idle_again() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 60_000);
    let pid = h.pid(0);
    let user = h.written(pid).last().cloned().unwrap();
    assert_eq!(user["type"], "user");
    assert_eq!(user["message"]["content"], "do t1");
    h.line(0, json!({"type": "assistant", "message": {"content": []}}));
    let progress: Vec<_> = h
        .published()
        .into_iter()
        .filter(|(s, _)| s.starts_with("_INBOX"))
        .collect();
    assert!(matches!(progress[0].1.payload, Payload::TaskProgress(_)));
    h.advance(1_234);
    h.result_line(0, "4");
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].status, r[0].duration_ms),
        (TaskStatus::Completed, 1_234)
    );
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.sup.agents[0].tasks_done, 1);
    assert_eq!(h.sup.agents[0].cost_usd, 0.5);
    assert_eq!(h.dispatched(), ["ready 0"]);
}

#[test]
fn the_watchdog_kills_a_busy_agent_that_stays_silent() {
    let mut s = spec("a");
    s.health.idle_timeout = Duration::from_millis(10_000);
    let mut h = Harness::ready(vec![s]);
    h.assign(0, "t1", 600_000);
    let pid = h.pid(0);
    // Output pushes the watchdog back.
    h.advance(6_000);
    h.line(0, json!({"type": "assistant"}));
    h.advance(6_000);
    assert!(h.signals(pid).is_empty());
    h.advance(4_000);
    assert_eq!(h.signals(pid), [libc::SIGKILL]);
    assert_eq!(h.state(0), AgentState::Error);
    assert_eq!(h.reason(0), Some(ReasonCode::Hung));
    h.killed(0);
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, TaskStatus::Failed);
    let errors = r[0].errors.clone().unwrap();
    assert_eq!(errors[0], "the agent was taken down: hung");
    assert_eq!(errors[1], format!("stderr of {pid}"));
    h.advance(100);
    assert_eq!(h.spawns(), 2, "restarted by policy");
}

#[test]
fn a_running_task_past_its_deadline_is_interrupted_and_answered_timeout() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 1_000);
    let pid = h.pid(0);
    h.advance(1_000);
    let interrupt = h.written(pid).last().cloned().unwrap();
    assert_eq!(interrupt["request"]["subtype"], "interrupt");
    h.init_line(0);
    h.line(
        0,
        json!({"type": "result", "subtype": "error_during_execution", "is_error": true}),
    );
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, TaskStatus::Timeout);
    assert_eq!(r[0].errors.as_ref().unwrap()[0], "timed out after 1000 ms");
    assert_eq!(h.state(0), AgentState::Idle);
    h.advance(10_000);
    assert!(h.signals(pid).is_empty(), "the grace timer is stale");
}

/// An interrupt that lands before the turn began: claude ends it with a
/// bare result, which frees the agent (no kill, no restart).
#[test]
fn a_task_interrupted_before_its_turn_began_frees_the_agent() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 1);
    let pid = h.pid(0);
    h.advance(1);
    h.line(
        0,
        json!({"type": "result", "subtype": "error_during_execution", "is_error": true}),
    );
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, TaskStatus::Timeout);
    assert_eq!(h.state(0), AgentState::Idle);
    h.advance(10_000);
    assert!(h.signals(pid).is_empty(), "killed: {:?}", h.signals(pid));
}

#[test]
fn a_task_that_ignores_its_interrupt_is_killed_after_the_grace() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 1_000);
    let pid = h.pid(0);
    h.advance(1_000);
    h.advance(4_999);
    assert!(h.signals(pid).is_empty());
    h.advance(1);
    assert_eq!(h.signals(pid), [libc::SIGKILL]);
    assert_eq!(h.reason(0), Some(ReasonCode::TaskDidNotStop));
    h.killed(0);
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, TaskStatus::Timeout);
}

#[test]
fn events_of_an_earlier_run_are_dropped() {
    let mut h = Harness::ready(vec![spec("a")]);
    let old = h.pid(0);
    h.exit(0, 1);
    h.advance(100);
    h.initialize(0);
    let new = h.pid(0);
    assert_ne!(old, new);
    h.assign(0, "t1", 60_000);
    // The old process's late lines and its exit change nothing.
    let late = Line::classify(
        br#"{"type":"result","subtype":"success","is_error":false,"result":"stale"}"#,
        1 << 20,
    );
    h.says(old, ChildMsg::Line(late));
    h.exit_pid(old, 0);
    assert_eq!(h.state(0), AgentState::Busy);
    assert!(h.results().is_empty());
    h.result_line(0, "fresh");
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].result.as_deref(), Some("fresh"));
}

#[test]
fn a_task_for_an_agent_no_longer_idle_goes_back_to_the_dispatcher() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.control(0, CommandType::Pause);
    assert_eq!(h.state(0), AgentState::Paused);
    assert_eq!(h.dispatched(), ["not-ready 0"]);
    h.assign(0, "t1", 60_000);
    assert_eq!(h.dispatched(), ["requeue t1"]);
    let pid = h.pid(0);
    assert_eq!(h.signals(pid), [libc::SIGSTOP]);
    h.control(0, CommandType::Resume);
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.signals(pid), [libc::SIGSTOP, libc::SIGCONT]);
}

#[test]
fn a_one_shot_agent_runs_a_process_per_task() {
    let mut s = spec("o");
    s.protocol = Protocol::Oneshot;
    let mut h = Harness::new(vec![s]);
    assert_eq!(h.state(0), AgentState::Idle, "ready without a process");
    assert_eq!(h.spawns(), 0);
    h.assign(0, "t1", 60_000);
    assert_eq!(
        h.world.lock().unwrap().spawns[0].2.as_deref(),
        Some("do t1")
    );
    h.result_line(0, "ok");
    assert_eq!(h.results().len(), 1);
    // The process lingers past its result: stopped after 2 s.
    let pid = h.pid(0);
    h.advance(2_000);
    assert_eq!(h.signals(pid), [libc::SIGTERM, libc::SIGCONT]);
    h.exit(0, 0);
    assert_eq!(h.state(0), AgentState::Idle);
}

#[test]
fn a_stray_second_result_never_answers_the_next_task() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 60_000);
    h.result_line(0, "one");
    // The agent wrote a second result for the same turn; it arrives once
    // the next task was already handed over.
    h.assign(0, "t2", 60_000);
    h.line(
        0,
        json!({"type": "result", "subtype": "success", "is_error": false, "result": "one again"}),
    );
    assert_eq!(h.state(0), AgentState::Busy, "t2 is still running");
    h.result_line(0, "two");
    let r: Vec<_> = h
        .results()
        .into_iter()
        .map(|r| (r.task_id, r.result.unwrap_or_default()))
        .collect();
    assert_eq!(
        r,
        [
            ("t1".to_string(), "one".to_string()),
            ("t2".to_string(), "two".to_string())
        ]
    );
}

#[test]
fn an_agent_that_closes_its_stdout_is_taken_down_at_once() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.assign(0, "t1", 600_000);
    let pid = h.pid(0);
    h.says(pid, ChildMsg::StdoutClosed);
    assert_eq!(h.signals(pid), [libc::SIGKILL]);
    assert_eq!(h.reason(0), Some(ReasonCode::StdoutClosed));
    h.killed(0);
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, TaskStatus::Failed);
    assert_eq!(
        r[0].errors.as_ref().unwrap()[0],
        "the agent was taken down: closed its stdout and stayed alive"
    );
}

/// One turn of session `sid` with `input` input tokens (half of them read
/// from the cache).
fn turn(h: &mut Harness, agent: usize, sid: &str, input: u64) {
    h.init_line(agent);
    h.line(
        agent,
        json!({"type": "result", "subtype": "success", "is_error": false, "result": "ok",
               "session_id": sid, "total_cost_usd": 0.0,
               "usage": {"input_tokens": input / 2, "cache_read_input_tokens": input - input / 2,
                         "output_tokens": 3}}),
    );
}

#[test]
fn an_agent_is_recycled_right_after_the_result_that_reaches_its_threshold() {
    let mut s = spec("a");
    s.recycle.after_input_tokens = Some(1_000);
    let mut h = Harness::ready(vec![s]);
    let pid = h.pid(0);
    h.assign(0, "t1", 60_000);
    turn(&mut h, 0, "s-1", 600);
    // Below the threshold: idle, offered again (holding its session), the
    // session shown.
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.dispatched(), ["holds 0 s-1", "ready 0", "release 1"]);
    let st = h.sup.report(None).agents.remove(0);
    let session = st.session.expect("a session");
    assert_eq!(
        (
            session.session_id.as_str(),
            session.tasks,
            session.input_tokens
        ),
        ("s-1", 1, 600)
    );
    h.assign(0, "t2", 60_000);
    turn(&mut h, 0, "s-1", 600);
    // Reached: the result is answered, then the agent restarts at once,
    // without being offered, and it is not counted as a restart.
    assert_eq!(h.results().len(), 2);
    assert_eq!(h.state(0), AgentState::Stopping);
    assert!(!h.dispatched().contains(&"ready 0".to_string()));
    h.exit_pid(pid, 0);
    assert_ne!(h.pid(0), pid);
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.sup.agents[0].restarts, 0);
    assert!(h.sup.report(None).agents[0].session.is_none());
}

#[test]
fn after_tasks_one_gives_every_task_a_fresh_process() {
    let mut s = spec("a");
    s.recycle.after_tasks = Some(1);
    let mut h = Harness::ready(vec![s]);
    let mut pids = vec![h.pid(0)];
    for n in 0..3 {
        h.assign(0, &format!("t{n}"), 60_000);
        turn(&mut h, 0, &format!("s-{n}"), 10);
        assert_eq!(h.state(0), AgentState::Stopping);
        h.exit(0, 0);
        h.initialize(0);
        pids.push(h.pid(0));
    }
    pids.dedup();
    assert_eq!(pids.len(), 4);
}
