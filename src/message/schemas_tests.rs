//! Tests of the message schemas: names on the wire, and round trips.

use super::*;

#[test]
fn wire_enums_keep_their_names() {
    let text = |v: &dyn erased::Ser| v.json();
    assert_eq!(text(&AgentState::Initializing), "\"initializing\"");
    for st in AgentState::ALL {
        assert_eq!(text(&st), format!("\"{st}\""));
    }
    assert_eq!(
        text(&ReasonCode::StoppedByOperator),
        "\"stopped_by_operator\""
    );
    assert_eq!(text(&Severity::Critical), "\"critical\"");
    assert_eq!(text(&LinkState::Reconnecting), "\"reconnecting\"");
    for code in AlertCode::KNOWN {
        assert_eq!(text(&code), format!("\"{}\"", code.as_str()));
    }
    let odd: AlertCode = serde_json::from_str("\"newer_code\"").unwrap();
    assert_eq!(odd, AlertCode::Other("newer_code".into()));
    assert_eq!(text(&odd), "\"newer_code\"");
    let known: AlertCode = serde_json::from_str("\"queue_full\"").unwrap();
    assert_eq!(known, AlertCode::QueueFull);
}

/// `serde_json::to_string` for any of the enums above.
mod erased {
    pub(super) trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

#[test]
fn a_large_report_splits_into_parts_that_each_fit() {
    let agent = |n: usize| AgentStatus {
        agent_id: format!("agent-{n}"),
        status: Some(AgentState::Idle),
        previous_status: None,
        uptime_seconds: 1.0,
        pid: Some(100),
        restarts: 0,
        resource_usage: None,
        agent_type: Some("claude".into()),
        daemon_id: Some("host".into()),
        tasks_completed: 0,
        tasks_failed: 0,
        task_counts: Vec::new(),
        session: None,
        total_cost_usd: 0.0,
        reason: None,
        reason_code: None,
        also_on: None,
        account: None,
    };
    let report = HealthReport {
        daemon_id: "host".into(),
        instance: None,
        uptime_seconds: 1.0,
        nats: LinkState::Off,
        queued: 0,
        queue_capacity: 10,
        agents: (0..100).map(agent).collect(),
        accounts: Vec::new(),
        jetstream: None,
        unrun: Vec::new(),
        part: None,
        parts: None,
    };
    let size = |r: &HealthReport| serde_json::to_vec(r).map_or(0, |v| v.len()) + 200;
    let whole = size(&report);
    assert_eq!(report.clone().split(whole, size).len(), 1);
    let parts = report.split(4096, size);
    assert!(parts.len() > 1);
    let total = u32::try_from(parts.len()).unwrap();
    let mut ids = Vec::new();
    for (n, p) in parts.iter().enumerate() {
        assert!(size(p) <= 4096, "part {n}: {}", size(p));
        assert_eq!((p.part, p.parts), (Some(n as u32 + 1), Some(total)));
        ids.extend(p.agents.iter().map(|a| a.agent_id.clone()));
    }
    let want: Vec<String> = (0..100).map(|n| format!("agent-{n}")).collect();
    assert_eq!(ids, want);
}

#[test]
fn reply_subjects_are_literal() {
    assert!(check_subject("_INBOX.abc.1").is_ok());
    assert!(check_subject("a.*").is_err());
    assert!(check_subject("a.>").is_err());
    assert!(check_subject("a b").is_err());
    assert!(check_subject("a..b").is_err());
    assert!(check_subject("").is_err());
}
