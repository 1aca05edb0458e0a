//! `--input-format stream-json` mode: the stdin reader thread (user messages, control requests
//! answered at once, also mid-turn) and the worker loop that runs the queued tasks.

use std::io::{self, BufRead};
use std::sync::atomic::Ordering;
use std::thread;

use serde_json::Value;

use crate::json::{new_uuid, obj, J};
use crate::output::{emit, exit_now, fail, final_code, hang_forever, pid, record};
use crate::session::Session;
use crate::signals::{ABORT_TASK, CURRENT_TASK, SHUTTING_DOWN};

/// A queued stream-json user message.
struct Task {
    prompt: String,
    /// The line to print for `--replay-user-messages`.
    replay: Option<J>,
}

fn parse_error(line: &str, msg: &str) -> ! {
    fail(&format!(
        "Error parsing streaming input line: {line}: SyntaxError: {msg}"
    ))
}

/// Text of a user message: `content` as a string, or the concatenated text blocks.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn control_success(request_id: Value, response: Option<J>) {
    let mut inner = vec![
        ("subtype", J::from("success")),
        ("request_id", J::Raw(request_id)),
    ];
    if let Some(r) = response {
        inner.push(("response", r));
    }
    emit(&obj! {"type": "control_response", "response": J::Obj(inner)});
}

fn handle_control(v: &Value) {
    let request_id = v.get("request_id").cloned().unwrap_or(Value::Null);
    let subtype = v.pointer("/request/subtype").and_then(Value::as_str);
    match subtype {
        Some("initialize") => control_success(request_id, Some(obj! {"pid": pid()})),
        Some("interrupt") => {
            control_success(request_id, None);
            let running = CURRENT_TASK.load(Ordering::SeqCst);
            if running != 0 {
                ABORT_TASK.store(running, Ordering::SeqCst);
            }
        }
        Some("set_model" | "set_permission_mode" | "set_max_thinking_tokens") => {
            control_success(request_id, None);
        }
        other => emit(&obj! {
            "type": "control_response",
            "response": obj! {
                "subtype": "error",
                "request_id": J::Raw(request_id),
                "error": format!("Unsupported control request subtype: {}", other.unwrap_or("undefined")),
            },
        }),
    }
}

/// The stream-json stdin reader: answers control requests itself, queues user messages for the
/// worker, dies on malformed input, and closes the queue on EOF.
fn stream_reader(tx: crossbeam_channel::Sender<Task>, session_id: String, replay: bool) {
    let mut stdin = io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&buf);
        let raw = text.strip_suffix('\n').unwrap_or(&text);
        record(obj! {"event": "stdin", "line": raw});
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => parse_error(line, &format!("JSON Parse error: {e}")),
        };
        match v.get("type").and_then(Value::as_str) {
            Some("control_request") => handle_control(&v),
            Some("user") => {
                let Some(message) = v.get("message").filter(|m| !m.is_null()) else {
                    parse_error(line, "user message is missing the \"message\" field")
                };
                let replay_line = replay.then(|| {
                    let uuid = v
                        .get("uuid")
                        .and_then(Value::as_str)
                        .map_or_else(new_uuid, str::to_owned);
                    obj! {
                        "type": "user",
                        "message": message.clone(),
                        "parent_tool_use_id": v.get("parent_tool_use_id").cloned().unwrap_or(Value::Null),
                        "session_id": session_id.as_str(),
                        "uuid": uuid,
                        "isReplay": true,
                    }
                });
                let task = Task {
                    prompt: message_text(message),
                    replay: replay_line,
                };
                if tx.send(task).is_err() {
                    break;
                }
            }
            // control_response, control_cancel_request, keep_alive, unknown types: ignored.
            _ => {}
        }
    }
}

/// `--input-format stream-json` mode: a reader thread feeds a queue, this thread runs tasks.
pub(crate) fn run_stream(mut session: Session, replay: bool) -> ! {
    let (tx, rx) = crossbeam_channel::unbounded::<Task>();
    let sid = session.session_id.clone();
    if let Err(e) = thread::Builder::new()
        .name("stdin".into())
        .spawn(move || stream_reader(tx, sid, replay))
    {
        fail(&format!("fake-claude: cannot start stdin thread: {e}"));
    }
    let mut last_is_error = false;
    let mut never_exit = false;
    while let Ok(task) = rx.recv() {
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            hang_forever(); // the signal thread is exiting the process
        }
        let outcome = session.run_task(&task.prompt, task.replay);
        last_is_error = outcome.failed;
        never_exit |= outcome.never_exit;
    }
    if never_exit {
        hang_forever();
    }
    exit_now(final_code(&session.knobs, last_is_error))
}
