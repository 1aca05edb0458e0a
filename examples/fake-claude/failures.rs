//! The result kinds and the real CLI's failure shapes: API/auth failures (a synthetic assistant
//! line carrying `error`, then a `success` result with `is_error`), usage limits (with or
//! without a `rate_limit_event`), and which kind a task gets when it starts (credentials file,
//! `FAKE_CLAUDE_LIMITED_UNTIL`, `FAKE_CLAUDE_FAIL_FIRST` counted across processes, directives).

use std::fs::OpenOptions;
use std::io::{self, Seek, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::directives::TaskCfg;
use crate::json::{arr, new_uuid, null, obj, J};
use crate::session::{Session, Usage};

/// How a task ends (`FAKE_CLAUDE_RESULT`, `[[fake:result=KIND]]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ResultKind {
    Success,
    MaxTurns,
    DuringExecution,
    NotLoggedIn,
    ApiError,
    Overloaded,
    RateLimit,
    UsageLimit,
    UsageLimitText,
    UsageLimitOld,
    OverloadedMidstream,
    PromptTooLong,
    MaxBudget,
}

const KINDS: [(&str, ResultKind); 13] = [
    ("success", ResultKind::Success),
    ("max_turns", ResultKind::MaxTurns),
    ("during_execution", ResultKind::DuringExecution),
    ("not_logged_in", ResultKind::NotLoggedIn),
    ("api_error", ResultKind::ApiError),
    ("overloaded", ResultKind::Overloaded),
    ("rate_limit", ResultKind::RateLimit),
    ("usage_limit", ResultKind::UsageLimit),
    ("usage_limit_text", ResultKind::UsageLimitText),
    ("usage_limit_old", ResultKind::UsageLimitOld),
    ("overloaded_midstream", ResultKind::OverloadedMidstream),
    ("prompt_too_long", ResultKind::PromptTooLong),
    ("max_budget", ResultKind::MaxBudget),
];

impl ResultKind {
    pub(crate) fn parse(s: &str) -> Option<ResultKind> {
        KINDS.iter().find(|(name, _)| *name == s).map(|(_, k)| *k)
    }

    pub(crate) fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(name, _)| name)
    }

    /// The shapes `FAKE_CLAUDE_LIMIT_SHAPE` accepts.
    pub(crate) fn parse_limit_shape(s: &str) -> Option<ResultKind> {
        ResultKind::parse(s).filter(|k| {
            matches!(
                k,
                ResultKind::UsageLimit
                    | ResultKind::UsageLimitText
                    | ResultKind::UsageLimitOld
                    | ResultKind::RateLimit
            )
        })
    }

    /// The API failure this kind stands for (`None` for kinds that run the task), with the
    /// usage-limit reset time `resets_at` (epoch seconds) where the shape shows one.
    pub(crate) fn api_failure(self, resets_at: u64) -> Option<ApiFailure> {
        let http = |status: u32, error: &'static str, kind: &str, message: &str| {
            ApiFailure {
            error,
            text: format!(
                "API Error: {status} {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"{message}\"}}}}"
            ),
            status: Some(status),
            terminal_reason: "completed",
            rate_limit_event: None,
        }
        };
        let session_limit = || {
            format!(
                "You've hit your session limit · resets {} (UTC)",
                clock(resets_at)
            )
        };
        let plain = |error: &'static str, text: String| ApiFailure {
            error,
            text,
            status: None,
            terminal_reason: "completed",
            rate_limit_event: None,
        };
        Some(match self {
            ResultKind::NotLoggedIn => plain(
                "authentication_failed",
                "Not logged in · Please run /login".to_owned(),
            ),
            ResultKind::ApiError => http(500, "server_error", "api_error", "Internal server error"),
            ResultKind::Overloaded => http(529, "server_error", "overloaded_error", "Overloaded"),
            ResultKind::RateLimit => http(
                429,
                "rate_limit",
                "rate_limit_error",
                "This request would exceed your account's rate limit. Please try again later.",
            ),
            ResultKind::UsageLimit => ApiFailure {
                rate_limit_event: Some(resets_at),
                ..plain("rate_limit", session_limit())
            },
            ResultKind::UsageLimitText => plain("rate_limit", session_limit()),
            ResultKind::UsageLimitOld => plain(
                "rate_limit",
                format!("Claude AI usage limit reached|{resets_at}"),
            ),
            ResultKind::PromptTooLong => ApiFailure {
                status: Some(400),
                terminal_reason: "prompt_too_long",
                ..plain("invalid_request", "Prompt is too long".to_owned())
            },
            ResultKind::Success
            | ResultKind::MaxTurns
            | ResultKind::DuringExecution
            | ResultKind::OverloadedMidstream
            | ResultKind::MaxBudget => return None,
        })
    }
}

/// A failed API call as the real CLI reports it: no model output, one synthetic assistant line,
/// then `subtype:"success","is_error":true` with the same text.
pub(crate) struct ApiFailure {
    /// The assistant line's top-level `error`.
    pub(crate) error: &'static str,
    /// The assistant text and the result's `result`.
    pub(crate) text: String,
    /// The result's `api_error_status` (`None` = null).
    pub(crate) status: Option<u32>,
    pub(crate) terminal_reason: &'static str,
    /// `resetsAt` of a `rate_limit_event` line printed before the assistant line.
    pub(crate) rate_limit_event: Option<u64>,
}

pub(crate) fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An epoch as a UTC wall clock time the way the CLI words a reset: `3pm`, `3:07pm`, `12am`.
pub(crate) fn clock(epoch: u64) -> String {
    let of_day = epoch % 86_400;
    let (hour, minute) = (of_day / 3600, of_day % 3600 / 60);
    let hour12 = match hour % 12 {
        0 => 12,
        h => h,
    };
    let half = if hour < 12 { "am" } else { "pm" };
    if minute == 0 {
        format!("{hour12}{half}")
    } else {
        format!("{hour12}:{minute:02}{half}")
    }
}

/// Appends one byte to the counter file and returns the file's size after that write: the
/// number of task starts so far across every process sharing the file. `O_APPEND` makes the
/// write and the offset it leaves one atomic step, so no two processes get the same number.
fn count_in_file(path: &Path) -> io::Result<u64> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(b".")?;
    f.stream_position()
}

impl Session {
    /// Which kind the task starting now gets, and the reset time its shape shows. Precedence:
    /// credentials file missing → `not_logged_in`; `FAKE_CLAUDE_LIMITED_UNTIL` in the future →
    /// the limit shape; one of the first `FAKE_CLAUDE_FAIL_FIRST` tasks → `FAKE_CLAUDE_FAIL_AS`;
    /// else the directive / `FAKE_CLAUDE_RESULT` kind.
    pub(crate) fn choose_kind(&self, n: u64, cfg: &TaskCfg) -> (ResultKind, u64) {
        let k = &self.knobs;
        let now = now_epoch();
        let resets_at = k
            .limited_until
            .unwrap_or_else(|| now.saturating_add(cfg.reset_in_s));
        // Counted at every task start, whatever the task turns out to be.
        let number = match &k.counter {
            Some(path) => count_in_file(path).unwrap_or_else(|e| {
                let _ = writeln!(
                    io::stderr(),
                    "fake-claude: counter file {}: {e}",
                    path.display()
                );
                n
            }),
            None => n,
        };
        let kind = if k.credentials.as_deref().is_some_and(|p| !p.exists()) {
            ResultKind::NotLoggedIn
        } else if k.limited_until.is_some_and(|until| now < until) {
            k.limit_shape
        } else if number <= k.fail_first {
            k.fail_as
        } else {
            cfg.result
        };
        (kind, resets_at)
    }

    /// `{"type":"rate_limit_event",…}`: the account hit its usage limit until `resets_at`.
    pub(crate) fn rate_limit_event_line(&self, resets_at: u64) -> J {
        obj! {
            "type": "rate_limit_event",
            "rate_limit_info": obj! {
                "status": "rejected",
                "resetsAt": resets_at,
                "rateLimitType": "five_hour",
                "overageStatus": "rejected",
                "isUsingOverage": false,
            },
            "uuid": new_uuid(),
            "session_id": self.session_id.as_str(),
        }
    }

    /// The assistant line the CLI makes up for a failed API call: model `<synthetic>`, the
    /// error text as its only block, zero usage, and a top-level `error`.
    pub(crate) fn synthetic_line(&self, f: &ApiFailure) -> J {
        obj! {
            "type": "assistant",
            "message": obj! {
                "id": new_uuid(),
                "container": null(),
                "model": "<synthetic>",
                "role": "assistant",
                "stop_reason": "stop_sequence",
                "stop_sequence": "",
                "type": "message",
                "usage": Usage::default().to_j(),
                "content": arr![obj! {"type": "text", "text": f.text.as_str()}],
            },
            "parent_tool_use_id": null(),
            "session_id": self.session_id.as_str(),
            "uuid": new_uuid(),
            "error": f.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_words_the_reset_like_the_cli() {
        assert_eq!(clock(15 * 3600), "3pm");
        assert_eq!(clock(15 * 3600 + 7 * 60 + 59), "3:07pm");
        assert_eq!(clock(0), "12am");
        assert_eq!(clock(12 * 3600 + 30 * 60), "12:30pm");
        assert_eq!(clock(86_400 + 9 * 3600), "9am");
    }

    #[test]
    fn every_kind_has_a_name_that_parses_back() {
        for (name, kind) in KINDS {
            assert_eq!(ResultKind::parse(name), Some(kind));
            assert_eq!(kind.name(), name);
        }
    }
}
