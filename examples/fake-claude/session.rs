//! The session a process serves and the JSON lines it prints: `system/init`, assistant
//! messages, partial messages, `result` lines (and their `--output-format text` form), with the
//! fake's token counts.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

use crate::cli::Format;
use crate::json::{api_id, arr, new_uuid, null, obj, J};
use crate::knobs::Knobs;

/// The session a process serves (one-shot: a single task; stream-json: many).
pub(crate) struct Session {
    pub(crate) knobs: Knobs,
    pub(crate) format: Format,
    pub(crate) session_id: String,
    pub(crate) cwd: String,
    pub(crate) model: String,
    pub(crate) tools: Vec<String>,
    pub(crate) permission_mode: String,
    pub(crate) api_key_source: &'static str,
    pub(crate) max_turns: Option<u32>,
    pub(crate) include_partial: bool,
    /// State dir to register the session in (unless `--no-session-persistence`).
    pub(crate) persist_dir: Option<PathBuf>,
    pub(crate) tasks_started: u64,
    /// The session's prompts so far (restored by `--resume`).
    pub(crate) history: Vec<String>,
}

/// What a `result` line says (see [`Session::result_line`]).
pub(crate) struct ResultSpec {
    pub(crate) subtype: &'static str,
    pub(crate) is_error: bool,
    pub(crate) num_turns: u32,
    /// `Ok(result)` for `subtype:"success"`, `Err(errors)` for the `error_*` subtypes.
    pub(crate) text: Result<String, Vec<String>>,
    /// Only on `Ok` results; `None` = null.
    pub(crate) api_error_status: Option<u32>,
    pub(crate) stop_reason: Option<&'static str>,
    pub(crate) terminal_reason: &'static str,
    pub(crate) usage: Usage,
    /// `None`: no model was reached (cost 0, empty `modelUsage`).
    pub(crate) cost: Option<f64>,
}

/// A number as JavaScript prints it: whole numbers without `.0` (a zero cost is `0`).
fn js_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        // Exact: whole and within 2^53.
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// Token counts of the fake: they grow with the number of API calls.
#[derive(Clone, Copy, Default)]
pub(crate) struct Usage {
    input: u32,
    output: u32,
    cache_read: u32,
}

pub(crate) fn usage(calls: u32, prompt_len: usize) -> Usage {
    let prompt_tokens = u32::try_from(prompt_len / 4).unwrap_or(u32::MAX);
    Usage {
        input: (10 * calls).saturating_add(prompt_tokens),
        output: 5 * calls,
        cache_read: 1200 * calls,
    }
}

impl Usage {
    /// The API's `usage` object.
    pub(crate) fn to_j(self) -> J {
        obj! {
            "input_tokens": self.input,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output,
            "server_tool_use": obj! {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard",
        }
    }
}

impl Session {
    pub(crate) fn init_line(&self) -> J {
        obj! {
            "type": "system",
            "subtype": "init",
            "cwd": self.cwd.as_str(),
            "session_id": self.session_id.as_str(),
            "tools": J::Arr(self.tools.iter().map(|t| J::from(t.as_str())).collect()),
            "mcp_servers": arr![],
            "model": self.model.as_str(),
            "permissionMode": self.permission_mode.as_str(),
            "slash_commands": arr!["compact", "context", "cost"],
            "apiKeySource": self.api_key_source,
            "claude_code_version": self.knobs.version.as_str(),
            "output_style": "default",
            "agents": arr!["general-purpose"],
            "skills": arr![],
            "plugins": arr![],
            "uuid": new_uuid(),
            "fast_mode_state": "off",
        }
    }

    /// An assistant turn that calls one tool, as claude writes it.
    pub(crate) fn tool_use_line(&self, model: &str, tool_use: J) -> J {
        self.assistant_line(model, arr![tool_use], "tool_use", usage(1, 0).to_j())
    }

    pub(crate) fn assistant_line(&self, model: &str, content: J, stop_reason: &str, usage: J) -> J {
        obj! {
            "type": "assistant",
            "message": obj! {
                "id": api_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": null(),
                "usage": usage,
            },
            "parent_tool_use_id": null(),
            "session_id": self.session_id.as_str(),
            "uuid": new_uuid(),
        }
    }

    pub(crate) fn partial_line(&self, text: &str) -> J {
        obj! {
            "type": "stream_event",
            "event": obj! {
                "type": "content_block_delta",
                "index": 0,
                "delta": obj! {"type": "text_delta", "text": text},
            },
            "session_id": self.session_id.as_str(),
            "parent_tool_use_id": null(),
            "uuid": new_uuid(),
        }
    }

    /// A `result` line: `Ok(text)` results (`subtype:"success"`) carry `api_error_status` and
    /// `result`, the `error_*` ones `errors` and no `result`.
    pub(crate) fn result_line(&self, started: Instant, spec: ResultSpec) -> J {
        let ResultSpec {
            subtype,
            is_error,
            num_turns,
            text: result_text,
            api_error_status,
            stop_reason,
            terminal_reason,
            usage,
            cost,
        } = spec;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut fields: Vec<(&'static str, J)> = vec![
            ("type", "result".into()),
            ("subtype", subtype.into()),
            ("is_error", is_error.into()),
        ];
        match result_text {
            Ok(text) => {
                fields.push(("api_error_status", api_error_status.into()));
                fields.push(("duration_ms", duration_ms.into()));
                fields.push(("duration_api_ms", (duration_ms * 3 / 4).into()));
                fields.push(("num_turns", num_turns.into()));
                fields.push(("result", text.into()));
            }
            Err(errors) => {
                fields.push(("duration_ms", duration_ms.into()));
                fields.push(("duration_api_ms", (duration_ms * 3 / 4).into()));
                fields.push(("num_turns", num_turns.into()));
                fields.push(("errors", J::Arr(errors.into_iter().map(J::from).collect())));
            }
        }
        // `modelUsage` is keyed by the model name, so it is built as a plain serde_json map.
        let mut model_usage = serde_json::Map::new();
        if let Some(cost) = cost {
            model_usage.insert(
                self.model.clone(),
                serde_json::json!({
                    "inputTokens": usage.input,
                    "outputTokens": usage.output,
                    "cacheReadInputTokens": usage.cache_read,
                    "cacheCreationInputTokens": 0,
                    "webSearchRequests": 0,
                    "costUSD": js_number(cost),
                    "contextWindow": 200_000,
                    "maxOutputTokens": 32_000,
                }),
            );
        }
        let model_usage = J::Raw(Value::Object(model_usage));
        fields.extend([
            ("stop_reason", stop_reason.into()),
            ("session_id", self.session_id.as_str().into()),
            ("total_cost_usd", js_number(cost.unwrap_or(0.0)).into()),
            ("usage", usage.to_j()),
            ("modelUsage", model_usage),
            ("permission_denials", arr![]),
            ("terminal_reason", terminal_reason.into()),
            ("fast_mode_state", "off".into()),
            ("uuid", new_uuid().into()),
        ]);
        J::Obj(fields)
    }
}

/// What `--output-format text` prints for a result: the `result` text, or `Error: <errors>`.
pub(crate) fn text_of_result(fields: &[(&'static str, J)]) -> String {
    let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
    match (get("result"), get("errors")) {
        (Some(J::Raw(Value::String(s))), _) => s.clone(),
        (_, Some(J::Arr(errors))) => {
            let texts: Vec<String> = errors
                .iter()
                .filter_map(|e| match e {
                    J::Raw(Value::String(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            format!("Error: {}", texts.join("; "))
        }
        _ => String::new(),
    }
}
