//! The envelope decoder's rules, and generated envelopes that must
//! round-trip exactly.

use super::*;
use crate::message::failures::ErrorKind;
use crate::message::schemas::*;
use serde_json::json;

const MAX: usize = 1 << 20;

fn decode_json(v: Value) -> Result<Envelope, MessageError> {
    Envelope::decode(&serde_json::to_vec(&v).unwrap(), MAX)
}

fn err_text(v: Value) -> String {
    decode_json(v).unwrap_err().to_string()
}

#[test]
fn the_contract_example_decodes() {
    let e = decode_json(json!({
        "message_id": "6f1c7c4e-6f43-4b6e-9f3a-2b7f4a1d9c10",
        "timestamp": "2026-11-27T06:37:19Z", "schema_version": "1.0.0",
        "message_type": "task_assignment", "payload": {"task_id": "t", "prompt": "hi"},
        "correlation_id": null, "trace_id": null, "source_agent_id": null,
        "target_agent_id": "coder-1", "target_agent_type": "claude",
        "priority": 5, "timeout_ms": 300000, "reply_to": null, "metadata": {}
    }))
    .unwrap();
    assert_eq!(e.message_type(), MessageType::TaskAssignment);
    assert_eq!(e.target_agent_id.as_deref(), Some("coder-1"));
    assert_eq!(e.timeout_ms, Some(300_000));
}

#[test]
fn health_check_is_accepted_as_an_alias() {
    let e = decode_json(json!({"message_type": "health_check", "payload": {}})).unwrap();
    assert_eq!(e.message_type(), MessageType::SystemHealthCheck);
    assert!(String::from_utf8(e.encode())
        .unwrap()
        .contains("\"system_health_check\""));
}

#[test]
fn bad_input_is_refused_with_the_field_named() {
    let base =
        || json!({"message_type": "task_assignment", "payload": {"task_id": "t", "prompt": "p"}});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    assert!(err_text(with("priorty", json!(1))).contains("unknown field `priorty`"));
    assert!(err_text(with("priority", json!(0))).starts_with("priority: 0 is out of range"));
    assert!(err_text(with("priority", json!(11))).starts_with("priority: 11"));
    assert!(err_text(with("target_agent_id", json!("a.b")))
        .starts_with("target_agent_id: \"a.b\" contains '.'"));
    assert!(err_text(with("target_agent_id", json!("*")))
        .starts_with("target_agent_id: \"*\" contains '*'"));
    assert!(err_text(with("target_agent_type", json!("x>"))).starts_with("target_agent_type:"));
    assert!(err_text(with("reply_to", json!("a.*"))).starts_with("reply_to:"));
    assert!(err_text(with("timestamp", json!("yesterday"))).starts_with("timestamp: not RFC 3339"));
    assert!(err_text(with("schema_version", json!("2.0.0"))).starts_with("schema_version:"));
    assert!(
        err_text(with("message_type", json!("gossip"))).starts_with("message_type: unknown type")
    );
    assert!(err_text(with("timeout_ms", json!(0))).starts_with("timeout_ms:"));
    assert!(err_text(with("metadata", json!({"k": 1}))).starts_with("metadata.k:"));
    assert!(err_text(with("metadata", json!({"bad key": "v"}))).starts_with("metadata.bad key:"));
    assert!(err_text(with("payload", json!({"task_id": "t"}))).contains("missing field `prompt`"));
    assert!(err_text(with(
        "payload",
        json!({"task_id": "t", "prompt": "p", "x": 1})
    ))
    .contains("unknown field `x`"));
    assert!(
        err_text(with("payload", json!({"task_id": "t", "prompt": " "})))
            .starts_with("payload.prompt")
    );
    assert!(err_text(json!({"payload": {}})).contains("missing field `message_type`"));
    assert!(Envelope::decode(b"not json", MAX)
        .unwrap_err()
        .to_string()
        .starts_with("not a JSON envelope"));
    assert!(err_text(json!([1])).starts_with("not a JSON envelope"));
}

#[test]
fn oversize_input_is_refused_before_parsing() {
    let big = vec![b'{'; 2000];
    assert_eq!(
        Envelope::decode(&big, 1000),
        Err(MessageError::TooLarge {
            size: 2000,
            limit: 1000
        })
    );
}

/// A tiny deterministic generator for property-style round trips.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn text(&mut self) -> String {
        let parts = [
            "a",
            "ü",
            "\"q\"",
            "\\",
            "\n",
            "🦀",
            " ",
            "{}",
            "\u{0}",
            "x".repeat(50).leak(),
        ];
        (0..self.next() % 6).map(|_| self.pick(&parts)).collect()
    }
    fn id(&mut self) -> String {
        let n = 1 + self.next() % 64;
        (0..n)
            .map(|i| if (self.next() + i) % 3 == 0 { '-' } else { 'a' })
            .collect()
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Gen) -> T) -> Option<T> {
        (self.next() % 2 == 0).then(|| f(self))
    }
    /// Any JSON but null: `Some(null)` and `None` are one thing on the wire.
    fn value(&mut self) -> Value {
        match self.next() % 5 {
            0 => json!(false),
            1 => json!(self.next() % 1000),
            2 => json!(self.text()),
            3 => json!({"k": self.text(), "n": [1, 2.5, true]}),
            _ => json!([self.text()]),
        }
    }
}

fn payload(g: &mut Gen) -> Payload {
    let states = AgentState::ALL;
    match g.next() % 8 {
        0 => Payload::TaskAssignment(TaskAssignment {
            task_id: g.id(),
            prompt: format!("p{}", g.text()),
            context: g.opt(Gen::value),
            retries: g.opt(|g| (g.next() % 5) as u32),
            session_id: g.opt(|_| uuid::Uuid::new_v4().to_string()),
        }),
        1 => Payload::TaskProgress(TaskProgress {
            task_id: g.id(),
            agent_id: g.id(),
            event: RawJson::from_value(&g.value()),
        }),
        2 => Payload::TaskResult(TaskResult {
            task_id: g.id(),
            agent_id: g.id(),
            status: [
                TaskStatus::Completed,
                TaskStatus::Failed,
                TaskStatus::Cancelled,
                TaskStatus::Timeout,
            ][(g.next() % 4) as usize],
            result: g.opt(Gen::text),
            errors: g.opt(|g| vec![g.text()]),
            duration_ms: g.next() % 100_000,
            num_turns: g.opt(|g| g.next() % 10),
            total_cost_usd: g.opt(|g| (g.next() % 1000) as f64 / 1e4),
            usage: g.opt(|g| RawJson::from_value(&g.value())),
            session_id: g.opt(Gen::id),
            error_kind: g.opt(|g| ErrorKind::ALL[(g.next() % 14) as usize]),
            attempts: (g.next() % 4) as u32,
        }),
        3 => Payload::AgentCommand(AgentCommand {
            command_type: [CommandType::Stop, CommandType::Pause, CommandType::Execute]
                [(g.next() % 3) as usize],
            agent_id: g.opt(Gen::id),
            prompt: g.opt(Gen::text),
            task_id: g.opt(Gen::id),
            account: None,
        }),
        4 => Payload::AgentStatus(AgentStatus {
            agent_id: g.id(),
            status: g.opt(|g| states[(g.next() % 7) as usize]),
            previous_status: g.opt(|g| states[(g.next() % 7) as usize]),
            uptime_seconds: (g.next() % 1000) as f64 / 8.0,
            pid: g.opt(|g| (g.next() % 100_000) as u32),
            restarts: (g.next() % 50) as u32,
            resource_usage: g.opt(|g| ResourceUsage {
                memory_mb: (g.next() % 900) as f64 / 4.0,
                cpu_seconds: 0.5,
            }),
            agent_type: g.opt(Gen::id),
            daemon_id: g.opt(Gen::id),
            tasks_completed: g.next() % 9,
            tasks_failed: g.next() % 9,
            total_cost_usd: 0.25,
            reason: g.opt(Gen::text),
            reason_code: g.opt(|g| {
                [ReasonCode::Hung, ReasonCode::StoppedByOperator][(g.next() % 2) as usize]
            }),
            also_on: g.opt(|g| vec![g.id()]),
            account: None,
            task_counts: if g.next() % 2 == 0 {
                Vec::new()
            } else {
                vec![TaskCount {
                    status: TaskStatus::Failed,
                    error_kind: Some(ErrorKind::RateLimited),
                    count: g.next() % 9,
                }]
            },
            session: g.opt(|g| SessionView {
                session_id: g.id(),
                tasks: g.next() % 5,
                input_tokens: g.next(),
            }),
        }),
        5 => Payload::AgentRegistration(AgentRegistration {
            agent_id: g.id(),
            agent_type: g.id(),
            daemon_id: g.id(),
            protocol: "stream-json".into(),
        }),
        6 => Payload::SystemAlert(SystemAlert {
            severity: Severity::Error,
            code: AlertCode::parse(&g.id()),
            message: g.text(),
            agent_id: g.opt(Gen::id),
            task_id: g.opt(Gen::id),
            stderr: g.opt(|g| vec![g.text(), g.text()]),
            account: g.opt(Gen::id),
            reason: None,
            until: g.opt(Gen::text),
        }),
        _ => Payload::SystemHealthCheck(SystemHealthCheck {
            agent_id: g.opt(Gen::id),
            report: None,
        }),
    }
}

#[test]
fn thousands_of_generated_envelopes_round_trip() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    for i in 0..5000 {
        let mut e = Envelope::new(payload(&mut g));
        // RFC 3339 keeps nanoseconds; make the comparison exact anyway.
        e.timestamp =
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789 + i).unwrap();
        e.correlation_id = g.opt(|_| Uuid::new_v4());
        e.trace_id = g.opt(|g| g.id());
        e.source_agent_id = g.opt(Gen::id);
        e.target_agent_id = g.opt(Gen::id);
        e.target_agent_type = g.opt(Gen::id);
        e.priority = 1 + (g.next() % 10) as u8;
        e.timeout_ms = g.opt(|g| 1 + g.next() % MAX_TIMEOUT_MS);
        e.reply_to = g.opt(|g| format!("_INBOX.{}.{}", g.id(), g.next() % 99));
        if g.next() % 2 == 0 {
            e.metadata
                .insert(g.id(), g.text().replace(|c: char| c.is_control(), ""));
        }
        let bytes = e.encode();
        assert!(!bytes.contains(&b'\n'), "one line");
        let back = Envelope::decode(&bytes, usize::MAX)
            .unwrap_or_else(|err| panic!("#{i}: {err}\n{}", String::from_utf8_lossy(&bytes)));
        assert_eq!(back, e, "#{i}");
    }
}

#[test]
fn a_result_too_large_as_encoded_is_cut_to_fit_and_says_so() {
    let result = |text: String| {
        Envelope::new(Payload::TaskResult(TaskResult {
            task_id: "t".into(),
            agent_id: "a".into(),
            status: TaskStatus::Completed,
            result: Some(text),
            errors: None,
            duration_ms: 1,
            num_turns: Some(1),
            total_cost_usd: Some(0.5),
            usage: Some(RawJson::from_value(&json!({"input_tokens": 3}))),
            session_id: None,
            error_kind: None,
            attempts: 1,
        }))
    };
    // 20,000 raw bytes, 120,000 once escaped: the raw length would pass.
    let mut e = result("\u{1}".repeat(20_000));
    let bytes = e.encode_within(65_536).expect("fits");
    assert!(bytes.len() <= 65_536, "{}", bytes.len());
    let back = Envelope::decode(&bytes, usize::MAX).unwrap();
    let Payload::TaskResult(r) = back.payload else {
        panic!("a result");
    };
    let kept = r.result.unwrap().len();
    assert!(kept > 9_000 && kept < 20_000, "{kept}");
    assert!(r.usage.is_none());
    assert_eq!(r.status, TaskStatus::Completed);
    assert_eq!(r.total_cost_usd, Some(0.5));
    let note = &r.errors.unwrap()[0];
    assert!(note.starts_with("result cut from "), "{note}");
    assert!(
        note.ends_with("to fit the largest message (65536 bytes)"),
        "{note}"
    );

    // Multi-byte text is cut on a character boundary.
    let mut e = result("é".repeat(100_000));
    let bytes = e.encode_within(10_000).expect("fits");
    assert!(Envelope::decode(&bytes, usize::MAX).is_ok());
    assert!(bytes.len() <= 10_000);

    // What fits is left alone; what cannot fit at all says so.
    let mut small = result("4".into());
    assert_eq!(small.encode_within(65_536), Some(small.encode()));
    assert!(result("x".into()).encode_within(50).is_none());
    let mut alert = Envelope::new(Payload::SystemHealthCheck(SystemHealthCheck::default()));
    assert!(alert.encode_within(10).is_none());
}

#[test]
fn a_trace_id_is_one_printable_word_and_an_empty_one_is_none() {
    let task = |trace: &str| {
        json!({"message_type": "task_assignment", "payload": {"task_id": "t", "prompt": "p"},
            "trace_id": trace})
    };
    // A space would let an envelope write the rest of a log line.
    let forged = "x] completed; ERROR ALERT [trace y";
    assert!(err_text(task(forged)).contains("trace_id"));
    assert!(err_text(task("a\u{a0}b")).contains("trace_id"));
    assert_eq!(decode_json(task("")).unwrap().trace_id, None);
    assert_eq!(
        decode_json(task("4bf92f3577b34da6a3ce929d0e0e4736"))
            .unwrap()
            .trace_id
            .as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
}
