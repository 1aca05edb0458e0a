//! What `send` prints: `--output-format`, in the words of claude's own
//! flag. `text` is the answer alone, for `$(...)` in a shell; `json` the
//! `task_result` envelope (what `--wait` prints); `stream-json` each
//! progress envelope, then the result (what `--stream` prints).

use std::io::Write;

use crate::cli::client::print_line;
use crate::error::SystemError;
use crate::message::schemas::{TaskResult, TaskStatus};

/// How `send` answers on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// The task id once the task is accepted (no waiting).
    Id,
    /// The result text alone and a newline; a failure's errors on stderr.
    Text,
    /// The `task_result` envelope, one JSON line.
    Json,
    /// Each `task_progress` envelope as it comes, then the result.
    StreamJson,
}

impl Output {
    /// From `--output-format`, `--wait` and `--stream`; a format that says
    /// the opposite of `--stream` is a usage error.
    pub(crate) fn of(format: Option<&str>, wait: bool, stream: bool) -> Result<Output, String> {
        let chosen = match format {
            None => None,
            Some("text") => Some(Output::Text),
            Some("json") => Some(Output::Json),
            Some("stream-json") => Some(Output::StreamJson),
            Some(other) => {
                return Err(format!(
                    "--output-format {other:?} is not one of text, json, stream-json"
                ))
            }
        };
        match (chosen, stream) {
            (Some(Output::StreamJson) | None, true) => Ok(Output::StreamJson),
            (Some(_), true) => Err(format!(
                "--stream prints stream-json; it cannot be combined with --output-format {}",
                format.unwrap_or_default()
            )),
            (Some(f), false) => Ok(f),
            (None, false) if wait => Ok(Output::Json),
            (None, false) => Ok(Output::Id),
        }
    }

    /// Whether the command waits for each task's result.
    pub(crate) fn waits(self) -> bool {
        self != Output::Id
    }

    /// Whether progress envelopes are printed.
    pub(crate) fn progress(self) -> bool {
        self == Output::StreamJson
    }

    /// Prints one task's result: `data` is its envelope as it came.
    pub(crate) fn result(
        self,
        out: &mut impl Write,
        data: &[u8],
        r: &TaskResult,
    ) -> Result<(), SystemError> {
        match self {
            Output::Id => Ok(()),
            Output::Json | Output::StreamJson => print_line(out, data),
            Output::Text => {
                if r.status != TaskStatus::Completed {
                    crate::cli::report(&failure_line(r));
                }
                print_line(out, r.result.as_deref().unwrap_or_default().as_bytes())
            }
        }
    }
}

/// A failed task in one line for stderr: its id, status, kind and errors.
fn failure_line(r: &TaskResult) -> String {
    let mut line = format!("task {}: {}", r.task_id, r.status.as_str());
    if let Some(kind) = r.error_kind {
        line.push_str(&format!(" ({})", kind.as_str()));
    }
    if let Some(errors) = r.errors.as_ref().filter(|e| !e.is_empty()) {
        line.push_str(": ");
        line.push_str(&errors.join("; "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_flags() {
        assert_eq!(Output::of(None, false, false), Ok(Output::Id));
        assert_eq!(Output::of(None, true, false), Ok(Output::Json));
        assert_eq!(Output::of(None, false, true), Ok(Output::StreamJson));
        assert_eq!(Output::of(Some("text"), false, false), Ok(Output::Text));
        assert_eq!(Output::of(Some("text"), true, false), Ok(Output::Text));
        assert_eq!(Output::of(Some("json"), false, false), Ok(Output::Json));
        assert_eq!(
            Output::of(Some("stream-json"), true, true),
            Ok(Output::StreamJson)
        );
        assert!(Output::of(Some("text"), false, true)
            .unwrap_err()
            .contains("--stream"));
        assert!(Output::of(Some("yaml"), false, false)
            .unwrap_err()
            .contains("\"yaml\""));
    }
}
