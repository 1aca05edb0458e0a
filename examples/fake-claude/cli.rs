//! The options the fake acts on, taken from the parsed command line, and the checks on their
//! values (session id, MCP configs) and the model name they select.

use std::path::Path;

use crate::args::Parsed;
use crate::output::fail;

const DEFAULT_MODEL: &str = "claude-sonnet-5";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
    StreamJson,
}

/// The options the fake acts on.
pub(crate) struct Cli {
    pub(crate) print: bool,
    pub(crate) output: Format,
    pub(crate) stream_input: bool,
    pub(crate) verbose: bool,
    pub(crate) max_turns: Option<u32>,
    pub(crate) model: Option<String>,
    pub(crate) tools: Option<Vec<String>>,
    pub(crate) permission_mode: String,
    pub(crate) skip_permissions: bool,
    /// `Some(None)` = `--resume` without an id.
    pub(crate) resume: Option<Option<String>>,
    pub(crate) continue_: bool,
    pub(crate) fork: bool,
    pub(crate) session_id: Option<String>,
    pub(crate) mcp_configs: Vec<String>,
    pub(crate) replay_user: bool,
    pub(crate) include_partial: bool,
    pub(crate) no_persist: bool,
    pub(crate) prompt: Option<String>,
}

impl Cli {
    pub(crate) fn from_parsed(p: &Parsed) -> Cli {
        let format = |key: &str| match p.last(key) {
            Some("json") => Format::Json,
            Some("stream-json") => Format::StreamJson,
            _ => Format::Text,
        };
        let tools = p.has("--tools").then(|| {
            p.all("--tools")
                .iter()
                .flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()))
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Cli {
            print: p.has("--print"),
            output: format("--output-format"),
            stream_input: format("--input-format") == Format::StreamJson,
            verbose: p.has("--verbose"),
            // Like the real CLI, an unparsable value is not rejected (it just imposes no cap).
            max_turns: p.last("--max-turns").and_then(|v| v.trim().parse().ok()),
            model: p.last("--model").map(str::to_owned),
            tools,
            permission_mode: p.last("--permission-mode").unwrap_or("default").to_owned(),
            skip_permissions: p.has("--dangerously-skip-permissions"),
            resume: p
                .has("--resume")
                .then(|| p.last("--resume").map(str::to_owned)),
            continue_: p.has("--continue"),
            fork: p.has("--fork-session"),
            session_id: p.last("--session-id").map(str::to_owned),
            mcp_configs: p.all("--mcp-config"),
            replay_user: p.has("--replay-user-messages"),
            include_partial: p.has("--include-partial-messages"),
            no_persist: p.has("--no-session-persistence"),
            prompt: p.operands.first().cloned(),
        }
    }

    pub(crate) fn bypass(&self) -> bool {
        self.skip_permissions || self.permission_mode == "bypassPermissions"
    }
}

pub(crate) fn is_valid_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

pub(crate) fn model_name(requested: Option<&str>) -> String {
    match requested {
        None | Some("" | "default" | "sonnet") => DEFAULT_MODEL.to_owned(),
        Some("opus") => "claude-opus-4-8".to_owned(),
        Some("haiku") => "claude-haiku-4-5".to_owned(),
        Some(other) => other.to_owned(),
    }
}

/// Checks `--mcp-config` values: JSON strings are accepted, paths must exist.
pub(crate) fn check_mcp_configs(configs: &[String], cwd: &str) {
    for c in configs {
        if c.trim_start().starts_with('{') {
            continue;
        }
        let path = Path::new(cwd).join(c);
        if !path.exists() {
            fail(&format!(
                "Error: Invalid MCP configuration:\nMCP config file not found: {}",
                path.display()
            ));
        }
    }
}
