//! `transport.jetstream`: durable tasks. Absent, tasks travel on core NATS
//! (at most once); present, they are stored in a JetStream work-queue stream
//! before `send` returns, and their results in a second stream.

use std::time::Duration;

use serde_json::Value;

use super::problems::Problems;

/// The settings of durable mode, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// The tasks stream (work-queue retention).
    pub stream: String,
    /// Copies of each stream in a NATS cluster (1 to 5).
    pub replicas: usize,
    /// A delivered task not acknowledged (or kept alive) within this is
    /// delivered again.
    pub ack_wait: Duration,
    /// Deliveries of one task before it is answered `undeliverable`.
    pub max_deliver: u32,
    /// The same `message_id` published again within this is stored once.
    pub duplicate_window: Duration,
    /// The results stream: one result per task id.
    pub results_stream: String,
    /// How long a stored result is kept.
    pub results_ttl: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: "MISTER_SMITH_TASKS".into(),
            replicas: 1,
            ack_wait: Duration::from_millis(30_000),
            max_deliver: 3,
            duplicate_window: Duration::from_millis(120_000),
            results_stream: "MISTER_SMITH_RESULTS".into(),
            results_ttl: Duration::from_millis(86_400_000),
        }
    }
}

/// The longest `results_ttl_ms`: a year.
const MAX_TTL_MS: u64 = 365 * 86_400_000;

/// Whether `name` can name a stream: letters, digits, `-` and `_`, at most
/// 64 (a stream name becomes a token of API subjects and a directory name).
fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?} must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{name:?} may contain only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

pub(super) fn parse(p: &mut Problems, v: Option<&Value>) -> Option<JetStreamConfig> {
    let v = v.filter(|v| !v.is_null())?;
    const PATH: &str = "transport.jetstream";
    let m = p.object(v, PATH)?;
    p.known_keys(
        m,
        PATH,
        &[
            "stream",
            "replicas",
            "ack_wait_ms",
            "max_deliver",
            "duplicate_window_ms",
            "results_stream",
            "results_ttl_ms",
        ],
    );
    let mut c = JetStreamConfig::default();
    for (key, slot) in [
        ("stream", &mut c.stream),
        ("results_stream", &mut c.results_stream),
    ] {
        if let Some(name) = p.opt_string(m, PATH, key) {
            match check_stream_name(&name) {
                Ok(()) => *slot = name,
                Err(why) => p.push(&format!("{PATH}.{key}"), why),
            }
        }
    }
    if c.stream == c.results_stream {
        p.push(
            &format!("{PATH}.results_stream"),
            format!("must differ from stream ({:?})", c.stream),
        );
    }
    let replicas = p.uint(m, PATH, "replicas", 1, 1);
    if replicas > 5 {
        p.push(
            &format!("{PATH}.replicas"),
            format!("{replicas} is more than 5 (NATS keeps at most 5 copies)"),
        );
    }
    c.replicas = replicas.clamp(1, 5) as usize;
    c.ack_wait = p.duration(m, PATH, "ack_wait_ms", c.ack_wait, 1000);
    let deliver = p.uint(m, PATH, "max_deliver", u64::from(c.max_deliver), 1);
    if deliver > 100 {
        p.push(
            &format!("{PATH}.max_deliver"),
            format!("{deliver} is more than 100"),
        );
    }
    c.max_deliver = deliver.min(100) as u32;
    c.duplicate_window = p.duration(m, PATH, "duplicate_window_ms", c.duplicate_window, 1000);
    if let Some(ms) = p.opt_uint(m, PATH, "results_ttl_ms", 1000) {
        if ms > MAX_TTL_MS {
            p.push(
                &format!("{PATH}.results_ttl_ms"),
                format!("{ms} is more than a year ({MAX_TTL_MS} ms)"),
            );
        } else {
            c.results_ttl = Duration::from_millis(ms);
        }
    }
    Some(c)
}
