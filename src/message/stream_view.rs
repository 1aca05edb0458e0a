//! A daemon's durable mode as its reports show it: whether JetStream
//! answers, and the tasks waiting in the stream for each of its consumers.

use serde::{Deserialize, Serialize};

/// Whether JetStream answers the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamLink {
    /// Not asked yet (NATS is not connected yet).
    Unknown,
    Ok,
    /// It does not answer, or refuses: durable tasks wait.
    Unreachable,
}

impl StreamLink {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamLink::Unknown => "unknown",
            StreamLink::Ok => "ok",
            StreamLink::Unreachable => "unreachable",
        }
    }
}

/// One consumer of the tasks stream and its backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerView {
    pub name: String,
    /// Tasks stored and not yet delivered to any daemon.
    pub waiting: u64,
}

/// Durable mode in a daemon's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamView {
    pub stream: String,
    pub state: StreamLink,
    /// Why it is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub consumers: Vec<ConsumerView>,
}
