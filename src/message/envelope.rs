//! The envelope: every message on every transport, with the fields the
//! contract fixes (`message_id`, `timestamp`, `schema_version`,
//! `message_type`, `payload`, the correlation and routing fields,
//! `priority`, `timeout_ms`, `reply_to`, `metadata`).
//!
//! Decoding is strict: oversize input is refused before parsing, unknown
//! fields are refused (a misspelt `priorty` must not silently become the
//! default), and the payload must match its `message_type`. Fields a foreign
//! client may reasonably leave out (`message_id`, `timestamp`,
//! `schema_version`, `priority`, `timeout_ms`, the optional ids) take
//! defaults. Encoding always writes every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::names::check_token;
use crate::message::error::MessageError;
use crate::message::schemas::{
    check_session_id, check_subject, AgentCommand, AgentRegistration, AgentStatus, SystemAlert,
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
        let text = serde_json::value::to_raw_value(&value)
            .map_err(|e| MessageError::field("payload", e.to_string()))?;
        Payload::from_raw(t, &text)
    }

    /// Decodes the JSON text `raw` as the payload of `t`. Parts that are
    /// only passed on (a progress event, a result's usage) stay text at any
    /// depth; the rest is typed.
    pub fn from_raw(t: MessageType, raw: &RawValue) -> Result<Payload, MessageError> {
        fn de<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Result<T, MessageError> {
            serde_json::from_str(raw.get())
                .map_err(|e| MessageError::field("payload", e.to_string()))
        }
        let p = match t {
            MessageType::AgentCommand => Payload::AgentCommand(de(raw)?),
            MessageType::AgentStatus => Payload::AgentStatus(de(raw)?),
            MessageType::AgentRegistration => Payload::AgentRegistration(de(raw)?),
            MessageType::TaskAssignment => Payload::TaskAssignment(de(raw)?),
            MessageType::TaskResult => Payload::TaskResult(de(raw)?),
            MessageType::TaskProgress => Payload::TaskProgress(de(raw)?),
            MessageType::SystemAlert => Payload::SystemAlert(de(raw)?),
            MessageType::SystemHealthCheck => Payload::SystemHealthCheck(de(raw)?),
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
                        "must be 1 to 128 bytes",
                    ));
                }
                if t.prompt.trim().is_empty() {
                    return Err(MessageError::field("payload.prompt", "must not be empty"));
                }
                if let Some(n) = t.retries.filter(|n| *n > crate::config::MAX_RETRIES) {
                    return Err(MessageError::field(
                        "payload.retries",
                        format!("{n} is more than {}", crate::config::MAX_RETRIES),
                    ));
                }
                if let Some(s) = &t.session_id {
                    check_session_id(s).map_err(|why| {
                        MessageError::field("payload.session_id", format!("{s:?} {why}"))
                    })?;
                }
            }
            Payload::AgentCommand(c) => {
                if let Some(a) = &c.agent_id {
                    id("agent_id", a)?;
                }
                if let Some(a) = &c.account {
                    id("account", a)?;
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
    payload: Box<RawValue>,
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

    /// Encodes the envelope within `limit` bytes, as encoded: a task
    /// result too large is cut down (its `usage` dropped, then its text
    /// shortened, then its error lines), each cut noted in its `errors`,
    /// so that a completed task's answer always goes out. `None` only for
    /// an envelope that cannot be made to fit (not a result, or a limit
    /// smaller than a bare result).
    pub fn encode_within(&mut self, limit: usize) -> Option<Vec<u8>> {
        let bytes = self.encode();
        if bytes.len() <= limit {
            return Some(bytes);
        }
        let Payload::TaskResult(r) = &mut self.payload else {
            return None;
        };
        let original = bytes.len();
        let note =
            format!("result cut from {original} bytes to fit the largest message ({limit} bytes)");
        r.errors.get_or_insert_with(Vec::new).push(note);
        r.usage = None;
        if let Some(text) = r.result.take() {
            // The longest head of the text that fits, by its encoded size
            // (a control character takes six bytes once escaped).
            let (mut lo, mut hi) = (0usize, text.len());
            while lo < hi {
                let mid = floor_boundary(&text, lo + (hi - lo).div_ceil(2));
                if mid <= lo {
                    break;
                }
                self.set_result_text(Some(text[..mid].to_string()));
                if self.encode().len() <= limit {
                    lo = mid;
                } else {
                    hi = floor_boundary(&text, mid - 1);
                }
            }
            self.set_result_text(Some(text[..lo].to_string()));
        }
        // Still too big: the error lines go, oldest first, but the note.
        loop {
            let bytes = self.encode();
            if bytes.len() <= limit {
                return Some(bytes);
            }
            let Payload::TaskResult(r) = &mut self.payload else {
                return None;
            };
            match r.errors.as_mut() {
                Some(errors) if errors.len() > 1 => {
                    errors.remove(0);
                }
                _ => return None,
            }
        }
    }

    fn set_result_text(&mut self, text: Option<String>) {
        if let Payload::TaskResult(r) = &mut self.payload {
            r.result = text;
        }
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
        // An empty trace id is none: the daemon gives the task one.
        let trace_id = w.trace_id.filter(|t| !t.is_empty());
        if let Some(t) = &trace_id {
            check_trace_id(t).map_err(|why| MessageError::field("trace_id", why))?;
        }
        let metadata = check_metadata(w.metadata.unwrap_or_default())?;
        let payload = Payload::from_raw(t, &w.payload)?;
        Ok(Envelope {
            message_id: w.message_id.unwrap_or_else(Uuid::new_v4),
            timestamp,
            schema_version,
            payload,
            correlation_id: w.correlation_id,
            trace_id,
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

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Checks one `metadata` key and value (shared with `send --meta`).
/// A trace id: not empty, at most [`MAX_TRACE_ID`] bytes, printable and
/// without spaces (it is written into log lines and grepped for: a space
/// would let an envelope forge the rest of a line).
pub fn check_trace_id(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("is empty".into());
    }
    if t.len() > MAX_TRACE_ID {
        return Err(format!("is longer than {MAX_TRACE_ID} bytes"));
    }
    if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("has a space or a control character".into());
    }
    Ok(())
}

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
#[path = "envelope_tests.rs"]
mod tests;
