//! The JetStream API as JSON on NATS subjects: the few requests a durable
//! fleet makes (create a stream or a consumer, read a consumer's state, get
//! a stored message), the answers to them, and the metadata a delivered
//! message carries in its acknowledgement subject.
//!
//! Written against the wire format rather than the `nats` crate's
//! `jetstream` module: its calls log every API error (a lookup that finds
//! nothing is an error) and wait through the crate's 5 ms flusher, and the
//! daemon needs most of them without blocking a thread at all.

// The blocking `nats` crate is deprecated upstream; see nats_transport.rs.
#![allow(deprecated)]

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::JetStreamConfig;
use crate::message::router::{results_capture, results_subject, tasks_capture};

/// Error codes of the JetStream API that callers act on.
pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
pub(crate) const NO_MESSAGE_FOUND: u64 = 10037;
pub(crate) const CONSUMER_NOT_FOUND: u64 = 10014;
pub(crate) const STREAM_NAME_EXISTS: u64 = 10058;

/// Why a JetStream request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsError {
    /// No answer within the bound.
    Timeout,
    /// Nobody serves the API subject: JetStream is not enabled on the
    /// server, or (in a cluster) has no leader for the moment.
    NoResponders,
    /// The API said no.
    Api {
        code: u64,
        err_code: u64,
        description: String,
    },
    /// The connection failed, or the answer was not what the API sends.
    Other(String),
}

impl JsError {
    pub(crate) fn err_code(&self) -> Option<u64> {
        match self {
            JsError::Api { err_code, .. } => Some(*err_code),
            _ => None,
        }
    }
}

impl std::fmt::Display for JsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsError::Timeout => f.write_str("JetStream did not answer in time"),
            JsError::NoResponders => {
                f.write_str("JetStream does not answer (not enabled on the server, or no leader)")
            }
            JsError::Api {
                code,
                err_code,
                description,
            } => write!(f, "JetStream: {description} ({code}/{err_code})"),
            JsError::Other(why) => write!(f, "JetStream: {why}"),
        }
    }
}

/// The API's answer: its JSON, or its error.
pub(crate) fn parse_answer(data: &[u8]) -> Result<Value, JsError> {
    let v: Value = serde_json::from_slice(data)
        .map_err(|e| JsError::Other(format!("unreadable answer: {e}")))?;
    if let Some(e) = v.get("error") {
        return Err(JsError::Api {
            code: e.get("code").and_then(Value::as_u64).unwrap_or(0),
            err_code: e.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            description: e
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .chars()
                .take(200)
                .collect(),
        });
    }
    Ok(v)
}

/// A stream's acknowledgement of a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PubAck {
    /// The stream that stored it.
    pub stream: String,
    pub seq: u64,
    /// The message id was stored before, within the duplicate window.
    pub duplicate: bool,
}

pub(crate) fn parse_pub_ack(data: &[u8]) -> Result<PubAck, JsError> {
    let v = parse_answer(data)?;
    let seq = v
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| JsError::Other("a publish acknowledgement without seq".into()))?;
    Ok(PubAck {
        stream: v
            .get("stream")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        seq,
        duplicate: v.get("duplicate").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `$JS.API.STREAM.CREATE.{name}` body of the tasks stream: a work queue
/// (a task leaves it when acknowledged), kept on disk.
pub(crate) fn tasks_stream(c: &JetStreamConfig) -> (String, Vec<u8>) {
    let body = json!({
        "name": c.stream,
        "subjects": [tasks_capture()],
        "retention": "workqueue",
        "storage": "file",
        "num_replicas": c.replicas,
        "duplicate_window": nanos(c.duplicate_window),
        "discard": "old",
        "max_msgs": -1, "max_bytes": -1, "max_age": 0, "max_msgs_per_subject": -1,
        "max_consumers": -1, "max_msg_size": -1,
    });
    (
        format!("$JS.API.STREAM.CREATE.{}", c.stream),
        body.to_string().into_bytes(),
    )
}

/// The results stream: the last result per task id, kept `results_ttl`.
pub(crate) fn results_stream(c: &JetStreamConfig) -> (String, Vec<u8>) {
    let body = json!({
        "name": c.results_stream,
        "subjects": [results_capture()],
        "retention": "limits",
        "storage": "file",
        "num_replicas": c.replicas,
        "max_msgs_per_subject": 1,
        "max_age": nanos(c.results_ttl),
        "duplicate_window": nanos(c.duplicate_window.min(c.results_ttl)),
        "discard": "old",
        "max_msgs": -1, "max_bytes": -1, "max_consumers": -1, "max_msg_size": -1,
    });
    (
        format!("$JS.API.STREAM.CREATE.{}", c.results_stream),
        body.to_string().into_bytes(),
    )
}

/// `$JS.API.STREAM.INFO.{name}`.
pub(crate) fn stream_info(name: &str) -> String {
    format!("$JS.API.STREAM.INFO.{name}")
}

/// A durable pull consumer `name` of the tasks stream for `filter`. The
/// server's own limit on deliveries is off: the daemon counts them, so that
/// the last one is answered rather than left in the stream.
pub(crate) fn consumer(c: &JetStreamConfig, name: &str, filter: &str) -> (String, Vec<u8>) {
    let body = json!({
        "stream_name": c.stream,
        "config": {
            "durable_name": name,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": nanos(c.ack_wait),
            "max_deliver": -1,
            "filter_subject": filter,
            "replay_policy": "instant",
            "max_ack_pending": -1,
            "max_waiting": 512,
        }
    });
    (
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{}.{name}", c.stream),
        body.to_string().into_bytes(),
    )
}

/// `$JS.API.CONSUMER.INFO.{stream}.{name}`.
pub(crate) fn consumer_info(stream: &str, name: &str) -> String {
    format!("$JS.API.CONSUMER.INFO.{stream}.{name}")
}

/// A pull request: up to `batch` messages, the request forgotten by the
/// server after `expires`.
pub(crate) fn pull(stream: &str, name: &str, batch: u32, expires: Duration) -> (String, Vec<u8>) {
    (
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
        json!({"batch": batch, "expires": nanos(expires)})
            .to_string()
            .into_bytes(),
    )
}

/// `$JS.API.STREAM.MSG.GET.{stream}` for the last message on `subject`.
pub(crate) fn last_on(stream: &str, subject: &str) -> (String, Vec<u8>) {
    (
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        json!({ "last_by_subj": subject }).to_string().into_bytes(),
    )
}

/// A message read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub seq: u64,
    /// Its headers, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    pub data: Vec<u8>,
}

impl Stored {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to [`last_on`]: the message, or `None` when there is none.
pub(crate) fn parse_stored(data: &[u8]) -> Result<Option<Stored>, JsError> {
    let v = match parse_answer(data) {
        Ok(v) => v,
        Err(e) if e.err_code() == Some(NO_MESSAGE_FOUND) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = v
        .get("message")
        .ok_or_else(|| JsError::Other("a stored message without its message".into()))?;
    let bad = |what: &str| JsError::Other(format!("a stored message with bad {what}"));
    let seq = m
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("seq"))?;
    let data = match m.get("data").and_then(Value::as_str) {
        Some(d) => base64_decode(d).ok_or_else(|| bad("data"))?,
        None => Vec::new(),
    };
    let headers = match m.get("hdrs").and_then(Value::as_str) {
        Some(h) => parse_headers(&base64_decode(h).ok_or_else(|| bad("headers"))?),
        None => Vec::new(),
    };
    Ok(Some(Stored { seq, headers, data }))
}

/// `NATS/1.0\r\nName: value\r\n...` as pairs.
fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(block)
        .split("\r\n")
        .skip(1)
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Standard base64 (with padding), as the API sends stored messages.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (k, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * k);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// What a delivered message's acknowledgement subject says about it:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
/// <published ns>.<pending>` (and the newer form with a domain and an
/// account hash before the stream, and a random token at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckInfo {
    pub consumer: String,
    pub delivered: u32,
    pub stream_seq: u64,
    /// Nanoseconds since the epoch when the message was stored.
    pub published_ns: u64,
    /// Messages left for the consumer after this one.
    pub pending: u64,
}

pub(crate) fn parse_ack_subject(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let t: Vec<&str> = rest.split('.').collect();
    let base = match t.len() {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    Some(AckInfo {
        consumer: t[base + 1].to_string(),
        delivered: t[base + 2].parse::<u64>().ok()?.min(u64::from(u32::MAX)) as u32,
        stream_seq: t[base + 3].parse().ok()?,
        published_ns: t[base + 5].parse().ok()?,
        pending: t[base + 6].parse().ok()?,
    })
}

/// The `payload.task_id` of a task envelope, read without decoding the rest.
pub(crate) fn task_id_of(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Payload {
        task_id: String,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        payload: Payload,
    }
    serde_json::from_slice::<Head>(data)
        .ok()
        .map(|h| h.payload.task_id)
}

/// The message id of a task's result: one per stored task message. The
/// task id is part of it: a stream deleted and made again numbers its
/// messages from 1 again, and a new task's result must not be taken for a
/// duplicate of an old one's.
pub(crate) fn result_msg_id(stream: &str, seq: u64, task_id: &str) -> String {
    // The id as its results subject writes it: no byte a header cannot
    // carry.
    let subject = results_subject(task_id);
    let token = subject.rsplit('.').next().unwrap_or("");
    format!("{stream}-{seq}-{token}")
}

/// A blocking API request on `conn`, bounded by `timeout`.
pub(crate) fn request(
    conn: &nats::Connection,
    subject: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Value, JsError> {
    match conn.request_timeout(subject, body, timeout) {
        Ok(m) => parse_answer(&m.data),
        Err(e) => Err(io_error(&e)),
    }
}

/// The crate's request errors as [`JsError`]s.
pub(crate) fn io_error(e: &std::io::Error) -> JsError {
    match e.kind() {
        std::io::ErrorKind::TimedOut => JsError::Timeout,
        std::io::ErrorKind::NotFound => JsError::NoResponders,
        _ => JsError::Other(e.to_string()),
    }
}

/// Creates stream `name` (`create` is its create request) unless it
/// exists; another daemon creating it at the same moment is fine.
pub(crate) fn ensure_stream(
    conn: &nats::Connection,
    name: &str,
    create: (String, Vec<u8>),
    timeout: Duration,
) -> Result<bool, JsError> {
    match request(conn, &stream_info(name), b"", timeout) {
        Ok(_) => return Ok(false),
        Err(e) if e.err_code() == Some(STREAM_NOT_FOUND) => {}
        Err(e) => return Err(e),
    }
    match request(conn, &create.0, &create.1, timeout) {
        Ok(_) => Ok(true),
        Err(e) if e.err_code() == Some(STREAM_NAME_EXISTS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Both streams of durable mode.
pub(crate) fn ensure_streams(
    conn: &nats::Connection,
    c: &JetStreamConfig,
    timeout: Duration,
) -> Result<(), JsError> {
    if ensure_stream(conn, &c.stream, tasks_stream(c), timeout)? {
        log::info!(
            "created the tasks stream {} ({} replica(s))",
            c.stream,
            c.replicas
        );
    }
    if ensure_stream(conn, &c.results_stream, results_stream(c), timeout)? {
        log::info!(
            "created the results stream {} ({} replica(s))",
            c.results_stream,
            c.replicas
        );
    }
    Ok(())
}

/// The last stored result of `task_id`, if any.
pub(crate) fn stored_result(
    conn: &nats::Connection,
    c: &JetStreamConfig,
    task_id: &str,
    timeout: Duration,
) -> Result<Option<Stored>, JsError> {
    let (subject, body) = last_on(
        &c.results_stream,
        &crate::message::router::results_subject(task_id),
    );
    match conn.request_timeout(&subject, body, timeout) {
        Ok(m) => parse_stored(&m.data),
        Err(e) => Err(io_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_what_the_server_sends() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$==").is_none());
    }

    #[test]
    fn ack_subjects_of_both_forms_are_read() {
        let a = parse_ack_subject("$JS.ACK.TASKS.agent-c1.2.17.5.1700000000000000000.3").unwrap();
        assert_eq!(a.consumer, "agent-c1");
        assert_eq!((a.delivered, a.stream_seq, a.pending), (2, 17, 3));
        assert_eq!(a.published_ns, 1_700_000_000_000_000_000);
        let b = parse_ack_subject("$JS.ACK.dom.ACC.TASKS.any-x.1.9.9.1700000000000000000.0.tok")
            .unwrap();
        assert_eq!((b.consumer.as_str(), b.stream_seq), ("any-x", 9));
        assert!(parse_ack_subject("$JS.ACK.x.y").is_none());
        assert!(parse_ack_subject("_INBOX.x").is_none());
    }

    #[test]
    fn answers_and_errors_are_told_apart() {
        let e = parse_answer(
            br#"{"error":{"code":404,"err_code":10037,"description":"no message found"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.err_code(), Some(NO_MESSAGE_FOUND));
        assert_eq!(
            parse_pub_ack(br#"{"stream":"S","seq":4,"duplicate":true}"#).unwrap(),
            PubAck {
                stream: "S".into(),
                seq: 4,
                duplicate: true
            }
        );
        assert!(
            parse_stored(br#"{"error":{"code":404,"err_code":10037,"description":"x"}}"#)
                .unwrap()
                .is_none()
        );
        let s = parse_stored(
            br#"{"message":{"subject":"a","seq":3,"hdrs":"TkFUUy8xLjANCk5hdHMtTXNnLUlkOiByLTMNCg0K","data":"e30="}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.seq, 3);
        assert_eq!(s.header("nats-msg-id"), Some("r-3"));
        assert_eq!(s.data, b"{}");
    }
}
