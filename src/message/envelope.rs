//! The envelope of DESIGN.md §5: every message on every transport.
//!
//! Decoding is strict: oversize input is refused before parsing, unknown
//! fields are refused (a misspelt `priorty` must not silently become the
//! default), and the payload must match its `message_type`. Fields a foreign
//! client may reasonably leave out (`message_id`, `timestamp`,
//! `schema_version`, `priority`, `timeout_ms`, the optional ids) take
//! defaults. Encoding always writes every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::message::error::MessageError;
use crate::message::schemas::{
    check_subject, check_token, AgentCommand, AgentRegistration, AgentStatus, SystemAlert,
    SystemHealthCheck, TaskAssignment, TaskProgress, TaskResult,
};

pub const SCHEMA_VERSION: &str = "1.0.0";
pub const DEFAULT_PRIORITY: u8 = 5;
/// The longest `timeout_ms` accepted: a week.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Bounds on `metadata` (keys, values, entries) and `trace_id`.
pub const MAX_META_KEY: usize = 64;
pub const MAX_META_VALUE: usize = 1024;
pub const MAX_META_ENTRIES: usize = 64;
pub const MAX_TRACE_ID: usize = 128;

/// The eight message types (contract names, snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageType {
    AgentCommand,
    AgentStatus,
    AgentRegistration,
    TaskAssignment,
    TaskResult,
    TaskProgress,
    SystemAlert,
    SystemHealthCheck,
}

impl MessageType {
    pub const ALL: [MessageType; 8] = [
        MessageType::AgentCommand,
        MessageType::AgentStatus,
        MessageType::AgentRegistration,
        MessageType::TaskAssignment,
        MessageType::TaskResult,
        MessageType::TaskProgress,
        MessageType::SystemAlert,
        MessageType::SystemHealthCheck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::AgentCommand => "agent_command",
            MessageType::AgentStatus => "agent_status",
            MessageType::AgentRegistration => "agent_registration",
            MessageType::TaskAssignment => "task_assignment",
            MessageType::TaskResult => "task_result",
            MessageType::TaskProgress => "task_progress",
            MessageType::SystemAlert => "system_alert",
            MessageType::SystemHealthCheck => "system_health_check",
        }
    }

    /// Parses a wire name; `health_check` is accepted for
    /// `system_health_check`.
    pub fn parse(s: &str) -> Option<MessageType> {
        if s == "health_check" {
            return Some(MessageType::SystemHealthCheck);
        }
        MessageType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload, typed by its message type.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    AgentCommand(AgentCommand),
    AgentStatus(AgentStatus),
    AgentRegistration(AgentRegistration),
    TaskAssignment(TaskAssignment),
    TaskResult(TaskResult),
    TaskProgress(TaskProgress),
    SystemAlert(SystemAlert),
    SystemHealthCheck(SystemHealthCheck),
}

impl Payload {
    pub fn message_type(&self) -> MessageType {
        match self {
            Payload::AgentCommand(_) => MessageType::AgentCommand,
            Payload::AgentStatus(_) => MessageType::AgentStatus,
            Payload::AgentRegistration(_) => MessageType::AgentRegistration,
            Payload::TaskAssignment(_) => MessageType::TaskAssignment,
            Payload::TaskResult(_) => MessageType::TaskResult,
            Payload::TaskProgress(_) => MessageType::TaskProgress,
            Payload::SystemAlert(_) => MessageType::SystemAlert,
            Payload::SystemHealthCheck(_) => MessageType::SystemHealthCheck,
        }
    }

    /// Decodes `value` as the payload of `t`, naming the bad field on error.
    pub fn from_value(t: MessageType, value: Value) -> Result<Payload, MessageError> {
        fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, MessageError> {
            serde_json::from_value(v).map_err(|e| MessageError::field("payload", e.to_string()))
        }
        let p = match t {
            MessageType::AgentCommand => Payload::AgentCommand(de(value)?),
            MessageType::AgentStatus => Payload::AgentStatus(de(value)?),
            MessageType::AgentRegistration => Payload::AgentRegistration(de(value)?),
            MessageType::TaskAssignment => Payload::TaskAssignment(de(value)?),
            MessageType::TaskResult => Payload::TaskResult(de(value)?),
            MessageType::TaskProgress => Payload::TaskProgress(de(value)?),
            MessageType::SystemAlert => Payload::SystemAlert(de(value)?),
            MessageType::SystemHealthCheck => Payload::SystemHealthCheck(de(value)?),
        };
        p.check()?;
        Ok(p)
    }

    /// Rules serde cannot express.
    fn check(&self) -> Result<(), MessageError> {
        let id = |field: &str, v: &str| {
            check_token(v).map_err(|why| {
                MessageError::field(format!("payload.{field}"), format!("{v:?} {why}"))
            })
        };
        match self {
            Payload::TaskAssignment(t) => {
                if t.task_id.is_empty() || t.task_id.len() > 128 {
                    return Err(MessageError::field(
                        "payload.task_id",
                        "must be 1 to 128 characters",
                    ));
                }
                if t.prompt.trim().is_empty() {
                    return Err(MessageError::field("payload.prompt", "must not be empty"));
                }
            }
            Payload::AgentCommand(c) => {
                if let Some(a) = &c.agent_id {
                    id("agent_id", a)?;
                }
            }
            Payload::AgentStatus(s) => id("agent_id", &s.agent_id)?,
            Payload::SystemHealthCheck(h) => {
                if let Some(a) = &h.agent_id {
                    id("agent_id", a)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub message_id: Uuid,
    pub timestamp: OffsetDateTime,
    pub schema_version: String,
    pub payload: Payload,
    pub correlation_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub source_agent_id: Option<String>,
    pub target_agent_id: Option<String>,
    pub target_agent_type: Option<String>,
    /// 1 (most urgent) to 10.
    pub priority: u8,
    /// `None` takes the daemon's `message.default_timeout_ms`.
    pub timeout_ms: Option<u64>,
    pub reply_to: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The wire shape coming in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default)]
    message_id: Option<Uuid>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    schema_version: Option<String>,
    message_type: String,
    payload: Value,
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    source_agent_id: Option<String>,
    #[serde(default)]
    target_agent_id: Option<String>,
    #[serde(default)]
    target_agent_type: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

/// The wire shape going out, borrowing from the envelope.
#[derive(Serialize)]
struct WireOut<'a> {
    message_id: &'a Uuid,
    timestamp: String,
    schema_version: &'a str,
    message_type: &'static str,
    payload: PayloadOut<'a>,
    correlation_id: &'a Option<Uuid>,
    trace_id: &'a Option<String>,
    source_agent_id: &'a Option<String>,
    target_agent_id: &'a Option<String>,
    target_agent_type: &'a Option<String>,
    priority: u8,
    timeout_ms: Option<u64>,
    reply_to: &'a Option<String>,
    metadata: &'a BTreeMap<String, String>,
}

/// A payload serialized as its own struct.
struct PayloadOut<'a>(&'a Payload);

impl Serialize for PayloadOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Payload::AgentCommand(p) => p.serialize(s),
            Payload::AgentStatus(p) => p.serialize(s),
            Payload::AgentRegistration(p) => p.serialize(s),
            Payload::TaskAssignment(p) => p.serialize(s),
            Payload::TaskResult(p) => p.serialize(s),
            Payload::TaskProgress(p) => p.serialize(s),
            Payload::SystemAlert(p) => p.serialize(s),
            Payload::SystemHealthCheck(p) => p.serialize(s),
        }
    }
}

impl Envelope {
    /// A new envelope with a fresh id, the current time and defaults.
    pub fn new(payload: Payload) -> Envelope {
        Envelope {
            message_id: Uuid::new_v4(),
            timestamp: OffsetDateTime::now_utc(),
            schema_version: SCHEMA_VERSION.to_string(),
            payload,
            correlation_id: None,
            trace_id: None,
            source_agent_id: None,
            target_agent_id: None,
            target_agent_type: None,
            priority: DEFAULT_PRIORITY,
            timeout_ms: None,
            reply_to: None,
            metadata: BTreeMap::new(),
        }
    }

    pub fn message_type(&self) -> MessageType {
        self.payload.message_type()
    }

    /// The JSON text, one line. The payload struct is written straight
    /// out, not through a `Value` tree: building that tree was a third of
    /// the daemon's instructions per task (callgrind).
    pub fn encode(&self) -> Vec<u8> {
        let timestamp = self
            .timestamp
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let wire = WireOut {
            message_id: &self.message_id,
            timestamp,
            schema_version: &self.schema_version,
            message_type: self.message_type().as_str(),
            payload: PayloadOut(&self.payload),
            correlation_id: &self.correlation_id,
            trace_id: &self.trace_id,
            source_agent_id: &self.source_agent_id,
            target_agent_id: &self.target_agent_id,
            target_agent_type: &self.target_agent_type,
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            reply_to: &self.reply_to,
            metadata: &self.metadata,
        };
        // Only strings, numbers and JSON values: serialization cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes and validates one envelope of at most `max_size` bytes.
    pub fn decode(bytes: &[u8], max_size: usize) -> Result<Envelope, MessageError> {
        if bytes.len() > max_size {
            return Err(MessageError::TooLarge {
                size: bytes.len(),
                limit: max_size,
            });
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            let msg = e.to_string();
            // serde names unknown and missing fields itself; keep its words.
            MessageError::Syntax(msg)
        })?;
        Envelope::from_wire(wire)
    }

    fn from_wire(w: Wire) -> Result<Envelope, MessageError> {
        let t = MessageType::parse(&w.message_type).ok_or_else(|| {
            MessageError::field(
                "message_type",
                format!("unknown type {:?} (expected one of {})", w.message_type, {
                    let names: Vec<&str> = MessageType::ALL.iter().map(|t| t.as_str()).collect();
                    names.join(", ")
                }),
            )
        })?;
        let timestamp = match w.timestamp {
            None => OffsetDateTime::now_utc(),
            Some(s) => OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| MessageError::field("timestamp", format!("not RFC 3339: {e}")))?,
        };
        let schema_version = w
            .schema_version
            .unwrap_or_else(|| SCHEMA_VERSION.to_string());
        if schema_version.split('.').next() != Some("1") {
            return Err(MessageError::field(
                "schema_version",
                format!("{schema_version:?} is not supported (expected 1.x.y)"),
            ));
        }
        let priority = match w.priority {
            None => DEFAULT_PRIORITY,
            Some(p) if (1..=10).contains(&p) => p as u8,
            Some(p) => {
                return Err(MessageError::field(
                    "priority",
                    format!("{p} is out of range (1 is most urgent, 10 least)"),
                ))
            }
        };
        if let Some(t) = w.timeout_ms {
            if t == 0 || t > MAX_TIMEOUT_MS {
                return Err(MessageError::field(
                    "timeout_ms",
                    format!("{t} is out of range (1 to {MAX_TIMEOUT_MS})"),
                ));
            }
        }
        for (field, v) in [
            ("source_agent_id", &w.source_agent_id),
            ("target_agent_id", &w.target_agent_id),
            ("target_agent_type", &w.target_agent_type),
        ] {
            if let Some(v) = v {
                check_token(v).map_err(|why| MessageError::field(field, format!("{v:?} {why}")))?;
            }
        }
        if let Some(r) = &w.reply_to {
            check_subject(r).map_err(|why| MessageError::field("reply_to", why))?;
        }
        if let Some(t) = &w.trace_id {
            if t.len() > MAX_TRACE_ID || t.chars().any(char::is_control) {
                return Err(MessageError::field(
                    "trace_id",
                    format!("must be at most {MAX_TRACE_ID} characters, none of them control characters"),
                ));
            }
        }
        let metadata = check_metadata(w.metadata.unwrap_or_default())?;
        let payload = Payload::from_value(t, w.payload)?;
        Ok(Envelope {
            message_id: w.message_id.unwrap_or_else(Uuid::new_v4),
            timestamp,
            schema_version,
            payload,
            correlation_id: w.correlation_id,
            trace_id: w.trace_id,
            source_agent_id: w.source_agent_id,
            target_agent_id: w.target_agent_id,
            target_agent_type: w.target_agent_type,
            priority,
            timeout_ms: w.timeout_ms,
            reply_to: w.reply_to,
            metadata,
        })
    }
}

/// Checks one `metadata` key and value (shared with `send --meta`).
pub fn check_meta_entry(key: &str, value: &str) -> Result<(), MessageError> {
    if key.is_empty()
        || key.len() > MAX_META_KEY
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(MessageError::field(
            format!("metadata.{key}"),
            format!("keys are 1 to {MAX_META_KEY} characters of A-Z, a-z, 0-9, '_', '-', '.'"),
        ));
    }
    if value.len() > MAX_META_VALUE || value.chars().any(char::is_control) {
        return Err(MessageError::field(
            format!("metadata.{key}"),
            format!("values are at most {MAX_META_VALUE} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_metadata(m: BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, MessageError> {
    if m.len() > MAX_META_ENTRIES {
        return Err(MessageError::field(
            "metadata",
            format!("{} entries, at most {MAX_META_ENTRIES}", m.len()),
        ));
    }
    m.into_iter()
        .map(|(k, v)| {
            let Value::String(s) = v else {
                return Err(MessageError::field(
                    format!("metadata.{k}"),
                    "values must be strings",
                ));
            };
            check_meta_entry(&k, &s)?;
            Ok((k, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::schemas::*;
    use crate::runtime::lifecycle::State;
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
        let base = || json!({"message_type": "task_assignment", "payload": {"task_id": "t", "prompt": "p"}});
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
        assert!(
            err_text(with("timestamp", json!("yesterday"))).starts_with("timestamp: not RFC 3339")
        );
        assert!(err_text(with("schema_version", json!("2.0.0"))).starts_with("schema_version:"));
        assert!(err_text(with("message_type", json!("gossip")))
            .starts_with("message_type: unknown type"));
        assert!(err_text(with("timeout_ms", json!(0))).starts_with("timeout_ms:"));
        assert!(err_text(with("metadata", json!({"k": 1}))).starts_with("metadata.k:"));
        assert!(
            err_text(with("metadata", json!({"bad key": "v"}))).starts_with("metadata.bad key:")
        );
        assert!(
            err_text(with("payload", json!({"task_id": "t"}))).contains("missing field `prompt`")
        );
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
        let states = State::ALL;
        match g.next() % 8 {
            0 => Payload::TaskAssignment(TaskAssignment {
                task_id: g.id(),
                prompt: format!("p{}", g.text()),
                context: g.opt(Gen::value),
            }),
            1 => Payload::TaskProgress(TaskProgress {
                task_id: g.id(),
                agent_id: g.id(),
                event: RawEvent::from_value(&g.value()),
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
                usage: g.opt(Gen::value),
                session_id: g.opt(Gen::id),
            }),
            3 => Payload::AgentCommand(AgentCommand {
                command_type: [CommandType::Stop, CommandType::Pause, CommandType::Execute]
                    [(g.next() % 3) as usize],
                agent_id: g.opt(Gen::id),
                prompt: g.opt(Gen::text),
                task_id: g.opt(Gen::id),
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
            }),
            5 => Payload::AgentRegistration(AgentRegistration {
                agent_id: g.id(),
                agent_type: g.id(),
                daemon_id: g.id(),
                protocol: "stream-json".into(),
            }),
            6 => Payload::SystemAlert(SystemAlert {
                severity: "error".into(),
                code: g.id(),
                message: g.text(),
                agent_id: g.opt(Gen::id),
                task_id: g.opt(Gen::id),
                stderr: g.opt(|g| vec![g.text(), g.text()]),
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
}
