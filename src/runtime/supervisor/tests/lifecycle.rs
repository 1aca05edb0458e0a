//! Starting, restarting, stopping, control commands, reports and shutdown.

use std::time::Duration;

use super::harness::{spec, Harness};
use crate::config::PolicyKind;
use crate::message::envelope::Payload;
use crate::message::router::{AgentIx, Origin};
use crate::message::schemas::{AgentState, AlertCode, CommandType, ReasonCode, TaskStatus};
use crate::runtime::events::{Command, Event, ReportKind};
use crate::runtime::supervisor::Outcome;

#[test]
fn a_stream_json_agent_is_idle_once_it_answers_initialize() {
    let mut h = Harness::new(vec![spec("a")]);
    assert_eq!(h.state(0), AgentState::Initializing);
    let pid = h.pid(0);
    assert_eq!(h.written(pid)[0]["type"], "control_request");
    h.initialize(0);
    assert_eq!(h.state(0), AgentState::Idle);
    assert_eq!(h.dispatched(), ["up 0", "ready 0"]);
    let statuses: Vec<_> = h
        .published()
        .into_iter()
        .filter(|(s, _)| s == "mister-smith.claude.a.agent_status")
        .collect();
    assert_eq!(statuses.len(), 2, "initializing, then idle");
}

#[test]
fn no_answer_to_initialize_fails_the_start_and_the_policy_restarts_it() {
    let mut h = Harness::new(vec![spec("a")]);
    let first = h.pid(0);
    h.advance(30_000);
    assert_eq!(h.state(0), AgentState::Error);
    assert_eq!(h.signals(first), [libc::SIGKILL]);
    assert_eq!(h.reason(0), Some(ReasonCode::StartupTimeout));
    h.killed(0);
    // Backoff: 100 ms, then a new run.
    assert_eq!(h.spawns(), 1);
    h.advance(99);
    assert_eq!(h.spawns(), 1);
    h.advance(1);
    assert_eq!(h.spawns(), 2);
    assert_eq!(h.state(0), AgentState::Initializing);
    assert_ne!(h.pid(0), first);
}

#[test]
fn the_restart_budget_is_spent_and_the_agent_terminated_with_an_alert() {
    let mut s = spec("a");
    s.restart.policy = PolicyKind::Always;
    s.restart.initial_delay = Duration::ZERO;
    s.restart.max_restarts = 2;
    let mut h = Harness::ready(vec![s]);
    h.exit(0, 1);
    h.initialize(0);
    h.exit(0, 1);
    h.initialize(0);
    assert_eq!(h.spawns(), 3);
    h.published();
    h.exit(0, 1);
    assert_eq!(h.spawns(), 3, "no fourth start");
    assert_eq!(h.state(0), AgentState::Terminated);
    assert_eq!(h.reason(0), Some(ReasonCode::RestartBudgetSpent));
    let alerts: Vec<_> = h
        .published()
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::SystemAlert(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].code, AlertCode::RestartBudgetSpent);
    assert_eq!(alerts[0].stderr.as_ref().map(Vec::len), Some(1));
    // A start by hand gets a fresh budget.
    h.control(0, CommandType::Start);
    assert_eq!(h.spawns(), 4);
}

#[test]
fn policies_decide_which_exits_restart() {
    let with = |policy| {
        let mut s = spec("a");
        s.restart.policy = policy;
        s
    };
    let mut h = Harness::ready(vec![with(PolicyKind::Never)]);
    h.exit(0, 1);
    h.advance(1_000);
    assert_eq!(h.state(0), AgentState::Terminated);
    assert_eq!(h.reason(0), Some(ReasonCode::NotRestarted));

    let mut h = Harness::ready(vec![with(PolicyKind::OnFailure)]);
    h.exit(0, 0);
    h.advance(1_000);
    assert_eq!(h.state(0), AgentState::Terminated);
    let mut h = Harness::ready(vec![with(PolicyKind::OnFailure)]);
    h.exit(0, 3);
    h.advance(100);
    assert_eq!((h.state(0), h.spawns()), (AgentState::Initializing, 2));
}

#[test]
fn exponential_backoff_doubles_between_consecutive_restarts() {
    let mut h = Harness::ready(vec![spec("a")]);
    let mut starts = Vec::new();
    for _ in 0..3 {
        h.exit(0, 1);
        let before = h.spawns();
        let mut waited = 0;
        while h.spawns() == before {
            h.advance(10);
            waited += 10;
        }
        starts.push(waited);
        h.initialize(0);
    }
    assert_eq!(starts, [100, 200, 400]);
}

#[test]
fn a_stop_closes_stdin_then_terms_then_kills() {
    let mut s = spec("a");
    s.stop_timeout = Duration::from_millis(4_000);
    let mut h = Harness::ready(vec![s]);
    let pid = h.pid(0);
    h.control(0, CommandType::Stop);
    assert_eq!(h.state(0), AgentState::Stopping);
    assert!(h.world.lock().unwrap().stdin_closed[&pid]);
    assert!(h.signals(pid).is_empty(), "an idle agent gets a moment");
    h.advance(500);
    assert_eq!(h.signals(pid), [libc::SIGTERM, libc::SIGCONT]);
    h.advance(3_499);
    assert_eq!(h.signals(pid).len(), 2);
    h.advance(1);
    assert_eq!(h.signals(pid).last(), Some(&libc::SIGKILL));
    h.killed(0);
    assert_eq!(h.state(0), AgentState::Terminated);
    assert_eq!(h.reason(0), Some(ReasonCode::StoppedByOperator));
    // The dispatcher cancels its queued tasks and refuses new ones.
    assert_eq!(
        h.dispatched().last().map(String::as_str),
        Some("down 0 (stopped by an operator)")
    );
    h.advance(60_000);
    assert_eq!(h.spawns(), 1, "a stopped agent stays down");
    // Started again: the stop's reason does not follow it.
    let starting: Vec<_> = h
        .control_all(0, CommandType::Start)
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::AgentStatus(st) if st.status == Some(AgentState::Initializing) => Some(st),
            _ => None,
        })
        .collect();
    assert!(!starting.is_empty());
    assert!(
        starting
            .iter()
            .all(|st| st.reason.is_none() && st.reason_code.is_none()),
        "{starting:?}"
    );
}

#[test]
fn control_commands_are_refused_where_the_state_does_not_allow_them() {
    let mut h = Harness::ready(vec![spec("a")]);
    let answer = h.control(0, CommandType::Resume);
    assert!(
        matches!(answer.payload, Payload::AgentStatus(_)),
        "idempotent"
    );
    h.control(0, CommandType::Stop);
    h.killed(0);
    let answer = h.control(0, CommandType::Pause);
    match answer.payload {
        Payload::SystemAlert(a) => {
            assert_eq!(a.code, AlertCode::Refused);
            assert_eq!(
                a.message,
                "agent a is in state terminated: nothing to pause"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_spawn_that_fails_is_an_error_restarted_by_policy_not_a_crash() {
    let mut s = spec("a");
    s.restart.max_restarts = 1;
    let mut h = Harness::ready(vec![s]);
    h.world.lock().unwrap().failing.push("a".into());
    h.exit(0, 1);
    assert_eq!(h.state(0), AgentState::Error);
    // The restart's spawn fails (out of fds, say): an error with its
    // reason, then the policy again, which has no budget left.
    h.advance(100);
    assert_eq!(h.state(0), AgentState::Terminated);
    assert_eq!(h.reason(0), Some(ReasonCode::RestartBudgetSpent));
    assert_eq!(h.spawns(), 1);
}

#[test]
fn a_cold_start_whose_spawn_fails_says_why() {
    let mut s = spec("a");
    s.restart.policy = PolicyKind::Never;
    let h = Harness::failing(vec![s, spec("b")], &["a"]);
    assert_eq!(h.state(0), AgentState::Terminated);
    assert_eq!(h.reason(0), Some(ReasonCode::NotRestarted));
    assert_eq!(h.state(1), AgentState::Initializing, "the others carry on");
    let status = h.sup.status(AgentIx(0), None);
    assert_eq!(status.reason_code, Some(ReasonCode::NotRestarted));
    // The reason is about agent a already: it does not name it again.
    let reason = status.reason.unwrap_or_default();
    assert!(reason.starts_with("cannot start"), "{reason}");
}

#[test]
fn a_start_whose_spawn_fails_is_refused_with_the_cause() {
    let mut s = spec("a");
    s.restart.policy = PolicyKind::Never;
    let mut h = Harness::failing(vec![s], &["a"]);
    let answer = h.control(0, CommandType::Start);
    let Payload::SystemAlert(alert) = answer.payload else {
        panic!("not refused: {answer:?}");
    };
    assert!(
        alert
            .message
            .starts_with("agent a did not start: cannot start"),
        "{}",
        alert.message
    );
}

#[test]
fn shutdown_stops_everyone_and_waits_for_the_dispatcher() {
    let mut h = Harness::ready(vec![spec("a"), spec("b")]);
    h.assign(1, "t1", 60_000);
    h.sup.on_signal(libc::SIGTERM);
    assert_eq!(h.dispatched().first().map(String::as_str), Some("shutdown"));
    // A task the dispatcher assigned before it closed is cancelled.
    h.assign(0, "late", 60_000);
    let cancelled: Vec<_> = h
        .results()
        .into_iter()
        .map(|r| (r.task_id, r.status))
        .collect();
    assert_eq!(cancelled, [("late".to_string(), TaskStatus::Cancelled)]);
    h.exit(0, 0);
    h.exit(1, 143);
    assert!(h.sup.finished().is_none(), "the dispatcher has not closed");
    let _ = h.events.send(Event::DispatcherClosed);
    h.pump();
    assert_eq!(h.sup.finished(), Some(Outcome::Graceful));
    let r = h.results();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].task_id.as_str(), r[0].status),
        ("t1", TaskStatus::Cancelled)
    );
    // A second signal while stopping forces it.
    let mut h = Harness::ready(vec![spec("a")]);
    h.sup.on_signal(libc::SIGTERM);
    h.sup.on_signal(libc::SIGINT);
    let pid = h.pid(0);
    assert_eq!(h.signals(pid).last(), Some(&libc::SIGKILL));
    assert_eq!(h.sup.shutdown, Some(Outcome::Forced(libc::SIGINT)));
}

#[test]
fn reports_answer_on_the_reply_subject() {
    let mut h = Harness::ready(vec![spec("a"), spec("b")]);
    let cmd = Command::Report {
        agent: None,
        kind: ReportKind::Health,
        origin: Origin {
            reply_to: Some("_INBOX.r.1".into()),
            ..Origin::default()
        },
    };
    let _ = h.events.send(Event::Command(cmd));
    h.pump();
    let answer = h
        .published()
        .into_iter()
        .find(|(s, _)| s == "_INBOX.r.1")
        .map(|(_, e)| e)
        .unwrap();
    match answer.payload {
        Payload::SystemHealthCheck(c) => {
            let report = c.report.unwrap();
            assert_eq!(report.agents.len(), 2);
            assert_eq!(report.daemon_id, "test");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.published().len(), 0);
}

/// Another daemon runs agent a too: reported at once, announced again while
/// the clash lasts, and over once that daemon has gone quiet.
#[test]
fn a_clash_with_another_daemon_is_reported_refreshed_and_ends() {
    let mut h = Harness::ready(vec![spec("a")]);
    let claim = |h: &mut Harness| {
        let cmd = Command::PeerClaims {
            agent: AgentIx(0),
            daemon: "d2".into(),
        };
        let _ = h.events.send(Event::Command(cmd));
        h.pump();
    };
    let registrations = |p: &[(String, crate::message::envelope::Envelope)]| {
        p.iter()
            .filter(|(_, e)| matches!(e.payload, Payload::AgentRegistration(_)))
            .count()
    };
    let also_on = |h: &Harness| h.sup.status(AgentIx(0), None).also_on;
    claim(&mut h);
    let first = h.published();
    assert!(first.iter().any(|(_, e)| matches!(
        &e.payload,
        Payload::SystemAlert(al) if al.code == AlertCode::DuplicateAgent
    )));
    assert_eq!(registrations(&first), 1, "ours again, for the other side");
    assert_eq!(also_on(&h), Some(vec!["d2".to_string()]));
    // The other side keeps announcing: the clash stays, and ours goes out
    // every 30 s; the alert is not repeated.
    for _ in 0..4 {
        h.advance(30_000);
        claim(&mut h);
        let p = h.published();
        assert_eq!(registrations(&p), 1);
        assert!(!p
            .iter()
            .any(|(_, e)| matches!(e.payload, Payload::SystemAlert(_))));
    }
    assert_eq!(also_on(&h), Some(vec!["d2".to_string()]));
    // Then it goes quiet (stopped, or fixed): over within 95 s.
    h.advance(90_000);
    assert_eq!(also_on(&h), Some(vec!["d2".to_string()]), "not yet");
    h.advance(30_000);
    assert_eq!(also_on(&h), None);
    h.published();
    h.advance(120_000);
    assert_eq!(registrations(&h.published()), 0, "no more announcements");
}

#[test]
fn a_restart_keeps_the_agents_queued_tasks() {
    let mut h = Harness::ready(vec![spec("a")]);
    h.control(0, CommandType::Restart);
    h.exit(0, 143);
    let seen = h.dispatched();
    assert!(
        seen.iter().all(|c| !c.starts_with("down")),
        "a restart must not cancel queued tasks: {seen:?}"
    );
    assert_eq!(h.state(0), AgentState::Initializing);
}
