//! Reloads: agents added, removed, changed or kept, and a reload refused.

use super::harness::{spec, Harness};
use crate::config::AgentSpec;
use crate::message::envelope::{Envelope, Payload};
use crate::message::router::Origin;
use crate::message::schemas::{AgentState, AlertCode, CommandType, TaskStatus};
use crate::runtime::events::{Command, Event};

/// Reloads a config whose agents are `agents`; the answer.
fn reload(h: &mut Harness, agents: Vec<AgentSpec>) -> Envelope {
    let mut config = h.sup.links.config.clone();
    config.agents = agents;
    let origin = Origin {
        reply_to: Some("_INBOX.reload.1".into()),
        ..Origin::default()
    };
    let _ = h.events.send(Event::Command(Command::Reload {
        loaded: Box::new(Ok(config)),
        origin: Some(origin),
    }));
    h.pump();
    h.published()
        .into_iter()
        .find(|(s, _)| s == "_INBOX.reload.1")
        .map(|(_, e)| e)
        .expect("an answer to the reload")
}

fn said(env: &Envelope) -> (AlertCode, String) {
    match &env.payload {
        Payload::SystemAlert(a) => (a.code.clone(), a.message.clone()),
        p => panic!("an alert expected, not {p:?}"),
    }
}

#[test]
fn a_reload_adds_removes_and_changes_agents_and_leaves_the_rest_alone() {
    let mut h = Harness::ready(vec![spec("a"), spec("b"), spec("c")]);
    h.assign(0, "t1", 60_000);
    let (pid_a, pid_b, pid_c) = (h.pid(0), h.pid(1), h.pid(2));
    let spawns = h.spawns();
    let mut a2 = spec("a");
    a2.args = vec!["--verbose".into()];
    let answer = reload(&mut h, vec![a2, spec("b"), spec("d")]);
    assert_eq!(
        said(&answer),
        (
            AlertCode::Reloaded,
            "reloaded: 1 added, 1 removed, 1 changed, 1 unchanged".into()
        )
    );
    // The new agent is known to the dispatcher and started.
    assert!(h.dispatched().contains(&"grow claude".to_string()));
    assert_eq!(h.sup.agents.len(), 4);
    assert_eq!(h.spawns(), spawns + 1);
    assert_eq!(h.sup.links.table.find("d").map(|i| i.0), Some(3));
    // The removed one is stopping, gone from the table.
    assert_eq!(h.state(2), AgentState::Stopping);
    assert!(h.sup.links.table.find("c").is_none());
    h.exit_pid(pid_c, 0);
    assert_eq!(h.state(2), AgentState::Terminated);
    // The changed one finishes its task first.
    assert_eq!(h.state(0), AgentState::Busy);
    assert!(h.signals(pid_a).is_empty());
    h.result_line(0, "done");
    let results = h.results();
    assert_eq!(results[0].status, TaskStatus::Completed);
    assert_eq!(h.state(0), AgentState::Stopping);
    h.exit_pid(pid_a, 0);
    assert_ne!(h.pid(0), pid_a);
    assert_eq!(h.sup.agents[0].spec.args, ["--verbose"]);
    assert_eq!(h.spawns(), spawns + 2);
    // The unchanged one was never touched.
    assert_eq!(h.pid(1), pid_b);
    assert!(h.signals(pid_b).is_empty());
    assert_eq!(h.state(1), AgentState::Idle);
    // Reports leave the removed agent out.
    let ids: Vec<String> = h
        .sup
        .report(None)
        .agents
        .into_iter()
        .map(|s| s.agent_id)
        .collect();
    assert_eq!(ids, ["a", "b", "d"]);
}

#[test]
fn an_idle_changed_agent_restarts_at_once() {
    let mut h = Harness::ready(vec![spec("a")]);
    let pid = h.pid(0);
    let mut a2 = spec("a");
    a2.env.insert("X".into(), "1".into());
    let (code, _) = said(&reload(&mut h, vec![a2]));
    assert_eq!(code, AlertCode::Reloaded);
    assert_eq!(h.state(0), AgentState::Stopping);
    h.exit_pid(pid, 0);
    assert_ne!(h.pid(0), pid);
    assert_eq!(
        h.sup.agents[0].spec.env.get("X").map(String::as_str),
        Some("1")
    );
}

#[test]
fn a_refused_reload_changes_nothing_and_says_why() {
    let mut h = Harness::ready(vec![spec("a"), spec("b")]);
    let pids = (h.pid(0), h.pid(1));
    let mut a2 = spec("a");
    a2.agent_type = "other".into();
    let (code, message) = said(&reload(&mut h, vec![a2, spec("c")]));
    assert_eq!(code, AlertCode::BadConfig);
    assert!(
        message.contains("changes its type from claude to other"),
        "{message}"
    );
    assert_eq!(h.sup.agents.len(), 2);
    assert_eq!((h.pid(0), h.pid(1)), pids);
    assert_eq!(h.sup.links.config.agents.len(), 2);
    assert!(h.sup.links.table.find("c").is_none());
    assert!(h.sup.agents.iter().all(|a| a.next_spec.is_none()));
}

#[test]
fn an_agent_added_again_while_its_removal_still_runs_must_wait() {
    let mut h = Harness::ready(vec![spec("a"), spec("b")]);
    let pid_b = h.pid(1);
    let (code, _) = said(&reload(&mut h, vec![spec("a")]));
    assert_eq!(code, AlertCode::Reloaded);
    let (code, message) = said(&reload(&mut h, vec![spec("a"), spec("b")]));
    assert_eq!(code, AlertCode::Unavailable);
    assert!(message.contains("still stopping"), "{message}");
    h.exit_pid(pid_b, 0);
    let (code, message) = said(&reload(&mut h, vec![spec("a"), spec("b")]));
    assert_eq!(
        (code, message.as_str()),
        (
            AlertCode::Reloaded,
            "reloaded: 1 added, 0 removed, 0 changed, 1 unchanged"
        )
    );
    assert_eq!(h.sup.links.table.find("b").map(|i| i.0), Some(2));
}

#[test]
fn a_pending_change_undone_before_the_agent_is_idle_restarts_nothing() {
    let mut h = Harness::ready(vec![spec("a")]);
    let pid = h.pid(0);
    h.assign(0, "t1", 60_000);
    let mut a2 = spec("a");
    a2.args = vec!["-v".into()];
    let (_, said1) = said(&reload(&mut h, vec![a2]));
    assert_eq!(
        said1,
        "reloaded: 0 added, 0 removed, 1 changed, 0 unchanged"
    );
    let (_, said2) = said(&reload(&mut h, vec![spec("a")]));
    assert_eq!(
        said2,
        "reloaded: 0 added, 0 removed, 0 changed, 1 unchanged"
    );
    h.result_line(0, "done");
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.pid(0), pid);
    assert!(h.signals(pid).is_empty());
}

#[test]
fn a_paused_agent_takes_its_change_when_resumed_and_a_reload_restart_is_not_counted() {
    let mut h = Harness::ready(vec![spec("a")]);
    let pid = h.pid(0);
    h.control(0, CommandType::Pause);
    let mut a2 = spec("a");
    a2.args = vec!["-v".into()];
    said(&reload(&mut h, vec![a2]));
    assert_eq!(h.state(0), AgentState::Paused);
    h.control(0, CommandType::Resume);
    assert_eq!(h.state(0), AgentState::Stopping);
    h.exit_pid(pid, 0);
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.sup.agents[0].restarts, 0);
}

#[test]
fn a_removed_agent_shows_as_stopping_until_its_process_is_gone() {
    let mut h = Harness::ready(vec![spec("a"), spec("b")]);
    let pid_b = h.pid(1);
    // b's id also runs on another daemon: removing b ends the clash.
    let _ = h.events.send(Event::Command(Command::PeerClaims {
        agent: crate::message::router::AgentIx(1),
        daemon: "other".into(),
    }));
    h.pump();
    assert!(!h.sup.agents[1].also_on.is_empty());
    said(&reload(&mut h, vec![spec("a")]));
    assert!(h.sup.agents[1].also_on.is_empty());
    // Its queued tasks are cancelled at once, not when its process is gone.
    assert!(h
        .dispatched()
        .contains(&"down 1 (removed from the config)".to_string()));
    let states: Vec<(String, Option<AgentState>)> = h
        .sup
        .report(None)
        .agents
        .into_iter()
        .map(|s| (s.agent_id, s.status))
        .collect();
    assert_eq!(
        states,
        [
            ("a".into(), Some(AgentState::Idle)),
            ("b".into(), Some(AgentState::Stopping))
        ]
    );
    h.exit_pid(pid_b, 0);
    assert_eq!(h.sup.report(None).agents.len(), 1);
}

#[test]
fn new_recycle_thresholds_apply_in_place_and_recycle_an_agent_already_past_them() {
    let mut h = Harness::ready(vec![spec("a"), spec("b")]);
    let (pid_a, pid_b) = (h.pid(0), h.pid(1));
    for agent in [0, 1] {
        h.assign(agent, &format!("t{agent}"), 60_000);
        h.result_line(agent, "ok");
    }
    // a: a threshold its session has not reached; b: one it has passed.
    let mut a2 = spec("a");
    a2.recycle.after_tasks = Some(5);
    let mut b2 = spec("b");
    b2.recycle.after_tasks = Some(1);
    let answer = reload(&mut h, vec![a2, b2]);
    assert_eq!(
        said(&answer).1,
        "reloaded: 0 added, 0 removed, 2 changed, 0 unchanged"
    );
    assert_eq!((h.pid(0), h.state(0)), (pid_a, AgentState::Idle));
    assert!(h.signals(pid_a).is_empty());
    assert_eq!(h.sup.agents[0].spec.recycle.after_tasks, Some(5));
    assert_eq!(h.state(1), AgentState::Stopping);
    h.exit_pid(pid_b, 0);
    assert_ne!(h.pid(1), pid_b);
    assert_eq!(h.sup.agents[1].restarts, 0);
}
