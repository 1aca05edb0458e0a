//! The environment knobs (`FAKE_CLAUDE_*`, see the table in `main.rs`), read once at startup.
//! An unparsable value is reported on stderr and ignored.

use std::env;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::failures::ResultKind;

const DEFAULT_VERSION: &str = "2.1.197";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Hang {
    Startup,
    Forever,
    BeforeResult,
    AfterResult,
}

impl Hang {
    pub(crate) fn parse(s: &str) -> Option<Hang> {
        match s {
            "startup" => Some(Hang::Startup),
            "forever" => Some(Hang::Forever),
            "before_result" => Some(Hang::BeforeResult),
            "after_result" => Some(Hang::AfterResult),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CrashMode {
    Exit1,
    Sigkill,
    Abort,
    PartialLine,
}

impl CrashMode {
    pub(crate) fn parse(s: &str) -> Option<CrashMode> {
        match s {
            "exit1" => Some(CrashMode::Exit1),
            "sigkill" => Some(CrashMode::Sigkill),
            "abort" => Some(CrashMode::Abort),
            "partial-line" => Some(CrashMode::PartialLine),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CrashMode::Exit1 => "exit1",
            CrashMode::Sigkill => "sigkill",
            CrashMode::Abort => "abort",
            CrashMode::PartialLine => "partial-line",
        }
    }
}

/// Everything read from `FAKE_CLAUDE_*` (and `IS_SANDBOX`).
pub(crate) struct Knobs {
    pub(crate) version: String,
    pub(crate) startup_delay_ms: u64,
    /// `None` = wait forever.
    pub(crate) stdin_wait: Option<Duration>,
    pub(crate) turns: u32,
    pub(crate) line_delay_ms: u64,
    pub(crate) result: ResultKind,
    pub(crate) exit_code: Option<i32>,
    pub(crate) api_retries: u32,
    pub(crate) crash_after: Option<u64>,
    pub(crate) crash_mode: CrashMode,
    pub(crate) hang: Option<Hang>,
    pub(crate) ignore_sigterm: bool,
    pub(crate) stderr_bytes: u64,
    pub(crate) big_line_bytes: u64,
    pub(crate) grandchild: Option<String>,
    pub(crate) grandchild_setsid: bool,
    pub(crate) record: Option<String>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) root_check: bool,
    pub(crate) is_sandbox: bool,
    /// `FAKE_CLAUDE_CREDENTIALS`: tasks are `not_logged_in` while this file is missing.
    pub(crate) credentials: Option<PathBuf>,
    /// `FAKE_CLAUDE_LIMITED_UNTIL`: epoch seconds until which every task hits the limit.
    pub(crate) limited_until: Option<u64>,
    /// `FAKE_CLAUDE_LIMIT_SHAPE`: how a limited task fails.
    pub(crate) limit_shape: ResultKind,
    /// `FAKE_CLAUDE_FAIL_FIRST`: the first N tasks fail as `fail_as`.
    pub(crate) fail_first: u64,
    pub(crate) fail_as: ResultKind,
    /// `FAKE_CLAUDE_COUNTER`: file counting task starts across processes.
    pub(crate) counter: Option<PathBuf>,
    /// `FAKE_CLAUDE_RESET_IN_S`: a usage limit resets this many seconds after the task starts.
    pub(crate) reset_in_s: u64,
    /// `FAKE_CLAUDE_COST`: `total_cost_usd` of runs that reached the model.
    pub(crate) cost: Option<f64>,
}

pub(crate) fn env_str(name: &str) -> Option<String> {
    env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

fn env_flag(name: &str) -> bool {
    env_str(name).is_some_and(|v| v == "1")
}

/// Parses a knob with `parse`; an unparsable value is reported on stderr and ignored.
fn env_with<T>(name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let raw = env_str(name)?;
    let value = parse(raw.trim());
    if value.is_none() {
        let _ = writeln!(io::stderr(), "fake-claude: ignoring invalid {name}={raw}");
    }
    value
}

fn env_path(name: &str) -> Option<PathBuf> {
    env_str(name).filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// A cost in USD: a finite, non-negative number.
pub(crate) fn parse_cost(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|c| c.is_finite() && *c >= 0.0)
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    env_with(name, |s| s.parse().ok())
}

impl Knobs {
    pub(crate) fn from_env() -> Knobs {
        Knobs {
            version: env_str("FAKE_CLAUDE_VERSION").unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
            startup_delay_ms: env_num("FAKE_CLAUDE_STARTUP_DELAY_MS").unwrap_or(0),
            stdin_wait: env_with("FAKE_CLAUDE_STDIN_WAIT_MS", |s| {
                if s == "forever" {
                    Some(None)
                } else {
                    s.parse().ok().map(|ms| Some(Duration::from_millis(ms)))
                }
            })
            .unwrap_or(Some(Duration::from_millis(3000))),
            turns: env_num("FAKE_CLAUDE_TURNS").unwrap_or(1),
            line_delay_ms: env_num("FAKE_CLAUDE_LINE_DELAY_MS").unwrap_or(0),
            result: env_with("FAKE_CLAUDE_RESULT", ResultKind::parse)
                .unwrap_or(ResultKind::Success),
            exit_code: env_num("FAKE_CLAUDE_EXIT_CODE"),
            api_retries: env_num("FAKE_CLAUDE_API_RETRIES").unwrap_or(0),
            crash_after: env_num("FAKE_CLAUDE_CRASH_AFTER_TASKS"),
            crash_mode: env_with("FAKE_CLAUDE_CRASH_MODE", CrashMode::parse)
                .unwrap_or(CrashMode::Exit1),
            hang: env_with("FAKE_CLAUDE_HANG", Hang::parse),
            ignore_sigterm: env_flag("FAKE_CLAUDE_IGNORE_SIGTERM"),
            stderr_bytes: env_num("FAKE_CLAUDE_STDERR_BYTES").unwrap_or(0),
            big_line_bytes: env_num("FAKE_CLAUDE_BIG_LINE_BYTES").unwrap_or(0),
            grandchild: env_str("FAKE_CLAUDE_SPAWN_GRANDCHILD").filter(|s| !s.trim().is_empty()),
            grandchild_setsid: env_flag("FAKE_CLAUDE_GRANDCHILD_SETSID"),
            record: env_str("FAKE_CLAUDE_RECORD").filter(|s| !s.is_empty()),
            state_dir: env_path("FAKE_CLAUDE_STATE_DIR"),
            root_check: env_flag("FAKE_CLAUDE_ROOT_CHECK"),
            is_sandbox: env_flag("IS_SANDBOX"),
            credentials: env_path("FAKE_CLAUDE_CREDENTIALS"),
            limited_until: env_num("FAKE_CLAUDE_LIMITED_UNTIL"),
            limit_shape: env_with("FAKE_CLAUDE_LIMIT_SHAPE", ResultKind::parse_limit_shape)
                .unwrap_or(ResultKind::UsageLimit),
            fail_first: env_num("FAKE_CLAUDE_FAIL_FIRST").unwrap_or(0),
            fail_as: env_with("FAKE_CLAUDE_FAIL_AS", ResultKind::parse)
                .unwrap_or(ResultKind::Overloaded),
            counter: env_path("FAKE_CLAUDE_COUNTER"),
            reset_in_s: env_num("FAKE_CLAUDE_RESET_IN_S").unwrap_or(3),
            cost: env_with("FAKE_CLAUDE_COST", parse_cost),
        }
    }
}
