//! What `send` reads in a daemon's answers, in core and durable mode.

use std::time::Duration;

use crate::message::schemas::RawJson;

/// Past a task's own deadline, how long to wait for its answer: the
/// daemon's interrupt grace (5 s) and some slack.
pub(super) const RESULT_MARGIN: Duration = Duration::from_secs(7);

/// The daemon's acknowledgement of a task: a progress event
/// `{"type":"system","subtype":"queued","timeout_ms":T,...}`. Only these
/// fields are read; any other event is passed through unparsed.
#[derive(serde::Deserialize)]
pub(super) struct Queued {
    #[serde(rename = "type")]
    kind: Option<String>,
    subtype: Option<String>,
    pub timeout_ms: Option<u64>,
}

impl Queued {
    pub(super) fn of(event: &RawJson) -> Option<Queued> {
        let head: Queued = serde_json::from_str(event.text()).ok()?;
        (head.kind.as_deref() == Some("system") && head.subtype.as_deref() == Some("queued"))
            .then_some(head)
    }
}
