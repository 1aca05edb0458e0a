//! `log_dir` and `logs`: where each task's transcript is written, and how
//! long transcripts are kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::problems::Problems;

/// The transcript settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsConfig {
    /// `log_dir`: `None` means `transcripts` in the run directory.
    pub dir: Option<PathBuf>,
    /// Transcripts older than this are removed.
    pub retain: Duration,
    /// Past this many bytes in all, the oldest transcripts are removed.
    pub max_bytes: u64,
    /// `logs.transcripts: false` writes none (the daemon's own log lines
    /// are unaffected).
    pub transcripts: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            dir: None,
            retain: Duration::from_secs(7 * 86_400),
            max_bytes: 1024 * 1024 * 1024,
            transcripts: true,
        }
    }
}

/// Ten years of days, a terabyte: past these a number is a typo.
const MAX_DAYS: u64 = 3650;
const MAX_MB: u64 = 1024 * 1024;

pub(super) fn parse(
    p: &mut Problems,
    log_dir: Option<&Value>,
    logs: Option<&Value>,
    base: &Path,
) -> LogsConfig {
    let mut c = LogsConfig::default();
    match log_dir {
        None | Some(Value::Null) => {}
        Some(v) => match p.string(v, "log_dir") {
            Some(d) if d.is_empty() => p.push("log_dir", "must not be empty"),
            Some(d) => c.dir = Some(base.join(d)),
            None => {}
        },
    }
    let Some(v) = logs.filter(|v| !v.is_null()) else {
        return c;
    };
    const PATH: &str = "logs";
    let Some(m) = p.object(v, PATH) else {
        return c;
    };
    p.known_keys(m, PATH, &["retain_days", "max_mb", "transcripts"]);
    let days = p.uint(m, PATH, "retain_days", 7, 1);
    if days > MAX_DAYS {
        p.push(
            "logs.retain_days",
            format!("{days} is more than {MAX_DAYS}"),
        );
    }
    c.retain = Duration::from_secs(days.min(MAX_DAYS) * 86_400);
    let mb = p.uint(m, PATH, "max_mb", 1024, 1);
    if mb > MAX_MB {
        p.push("logs.max_mb", format!("{mb} is more than {MAX_MB}"));
    }
    c.max_bytes = mb.min(MAX_MB) * 1024 * 1024;
    match m.get("transcripts") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => c.transcripts = *b,
        Some(_) => p.push("logs.transcripts", "expected true or false"),
    }
    c
}
