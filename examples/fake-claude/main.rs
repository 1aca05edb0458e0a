//! `fake-claude`: a faithful, network-free fake of Anthropic's `claude` CLI (Claude Code 2.1.197)
//! for the integration tests and the demo of `mister-smith`.
//!
//! It mirrors what the real binary does in print mode, as observed from Claude Code 2.x:
//! commander-style argument parsing (variadic list flags that swallow a following prompt, exact
//! error texts, exit 1), the 3 s stdin wait of text input mode, the stream-json event sequence, the
//! long-running `--input-format stream-json` worker with its control protocol, and the real signal
//! behaviour (TERM → exit 143, HUP → 129, INT → 0 when idle in stream-json mode, SIGPIPE ignored).
//!
//! # Modes
//!
//! * One-shot: `fake-claude -p PROMPT [--output-format text|json|stream-json --verbose]`.
//!   When stdin is not a TTY it waits for the first byte (see `FAKE_CLAUDE_STDIN_WAIT_MS`), then
//!   reads stdin to EOF and appends it as `PROMPT\nSTDIN`. One task runs; its final text is
//!   `done: <prompt>`. Exit 0, or 1 when the turn failed (the result has `is_error`, or an
//!   `error_*` subtype such as `overloaded_midstream`'s).
//! * Stream-json: `fake-claude -p --input-format stream-json --output-format stream-json --verbose`.
//!   Prints nothing until a stdin line arrives; answers `control_request`s at once (also mid-turn);
//!   runs `user` messages one after another; on stdin EOF finishes the queue and exits 1 if the last
//!   turn failed (as in one-shot mode), else 0.
//!
//! # Knobs (environment variables)
//!
//! | variable | values (default) | effect |
//! |---|---|---|
//! | `FAKE_CLAUDE_VERSION` | string (`2.1.197`) | version for `--version` and `system/init` |
//! | `FAKE_CLAUDE_STARTUP_DELAY_MS` | ms (0) | sleep at process start, before anything else |
//! | `FAKE_CLAUDE_STDIN_WAIT_MS` | ms or `forever` (3000) | one-shot wait for the first stdin byte |
//! | `FAKE_CLAUDE_TURNS` | K (1) | tool round trips (assistant `tool_use` + user `tool_result`) per task |
//! | `FAKE_CLAUDE_LINE_DELAY_MS` | ms (0) | sleep before every output line of a task |
//! | `FAKE_CLAUDE_RESULT` | a result kind, see below (`success`) | result shape |
//! | `FAKE_CLAUDE_EXIT_CODE` | n (unset) | forced exit status at the normal end (one-shot and stream EOF) |
//! | `FAKE_CLAUDE_API_RETRIES` | N (0) | `system/api_retry` lines before the first assistant line of a task |
//! | `FAKE_CLAUDE_CRASH_AFTER_TASKS` | N (unset) | die when task N+1 starts (before any of its output) |
//! | `FAKE_CLAUDE_CRASH_MODE` | `exit1`, `sigkill`, `abort`, `partial-line` (`exit1`) | how to die |
//! | `FAKE_CLAUDE_HANG` | `startup`, `forever`, `before_result`, `after_result` (unset) | see below |
//! | `FAKE_CLAUDE_IGNORE_SIGTERM` | `1` (unset) | SIGTERM is recorded and ignored |
//! | `FAKE_CLAUDE_STDERR_BYTES` | N (0) | write N bytes of ~100-char noise lines to stderr at startup |
//! | `FAKE_CLAUDE_BIG_LINE_BYTES` | N (0) | first `tool_result` of each task carries N bytes of content |
//! | `FAKE_CLAUDE_SPAWN_GRANDCHILD` | command line, split on whitespace | spawned at startup, stdio null |
//! | `FAKE_CLAUDE_GRANDCHILD_SETSID` | `1` (unset) | the grandchild calls `setsid()` (leaves our group) |
//! | `FAKE_CLAUDE_RECORD` | file path (unset) | append JSON lines describing what happened (below) |
//! | `FAKE_CLAUDE_STATE_DIR` | dir (unset) | session store for `--resume`/`--continue`/duplicate `--session-id` |
//! | `FAKE_CLAUDE_ROOT_CHECK` | `1` (unset) | refuse bypass mode as root unless `IS_SANDBOX=1` |
//! | `FAKE_CLAUDE_CREDENTIALS` | file path (unset) | every task is `not_logged_in` while the file is missing |
//! | `FAKE_CLAUDE_LIMITED_UNTIL` | epoch seconds (unset) | tasks fail as `FAKE_CLAUDE_LIMIT_SHAPE` until then |
//! | `FAKE_CLAUDE_LIMIT_SHAPE` | `usage_limit`, `usage_limit_text`, `usage_limit_old`, `rate_limit` (`usage_limit`) | how a limited task fails |
//! | `FAKE_CLAUDE_RESET_IN_S` | S (3) | a usage limit resets S seconds after the task starts |
//! | `FAKE_CLAUDE_FAIL_FIRST` | N (0) | the first N tasks fail as `FAKE_CLAUDE_FAIL_AS` |
//! | `FAKE_CLAUDE_FAIL_AS` | a result kind (`overloaded`) | how those tasks fail |
//! | `FAKE_CLAUDE_COUNTER` | file path (unset) | counts task starts across processes (for `FAIL_FIRST`) |
//! | `FAKE_CLAUDE_COST` | USD (unset) | `total_cost_usd` of runs that reached the model |
//!
//! Details:
//! * `FAKE_CLAUDE_HANG`: `startup` and `forever` behave the same: after startup (grandchild spawned,
//!   stderr noise written) print nothing, read nothing, answer nothing, stay alive until a signal.
//!   `before_result` prints each task's events up to (not including) its `result` line, then hangs
//!   for good (stdin EOF, `interrupt` and SIGINT don't end it; TERM/HUP do). `after_result` prints
//!   the whole task but then never exits, not even on stdin EOF (stream-json mode keeps serving
//!   further tasks until EOF, then hangs).
//! * `FAKE_CLAUDE_RESULT` kinds. `success`: the round trips, the final text, a `success` result.
//!   `max_turns` = `error_max_turns` with cap = `--max-turns` if given, else K
//!   (`errors:["Reached maximum number of turns (cap)"]`, `num_turns` cap+1, `terminal_reason`
//!   `max_turns`, no `result`). `during_execution` = the tool round trips, then
//!   `error_during_execution` with `errors:["fake-claude: simulated error during execution"]`,
//!   `terminal_reason` `model_error`. Independently of the knob, `--max-turns N` with K+1 > N
//!   prints N round trips and then the `error_max_turns` result.
//! * API failures (as the real CLI reports a failed API call, no round trips): after
//!   `system/init` and any `system/api_retry` lines, an assistant line with model `<synthetic>`,
//!   `stop_reason` `stop_sequence`, all-zero usage, one text block with the error text and a
//!   top-level `error`; then `subtype:"success","is_error":true,"result":<the same text>`,
//!   `api_error_status`, `num_turns` 1, `stop_reason` `stop_sequence`, `terminal_reason`
//!   `completed`, `total_cost_usd` 0, empty `modelUsage`. Kind → `error` / status / text:
//!   - `not_logged_in` → `authentication_failed` / null / `Not logged in · Please run /login`
//!   - `api_error` → `server_error` / 500 / `API Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal server error"}}`
//!   - `overloaded` → `server_error` / 529 / `API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`
//!   - `rate_limit` → `rate_limit` / 429 / `API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed your account's rate limit. Please try again later."}}`
//!   - `usage_limit` → `rate_limit` / null / `You've hit your session limit · resets 3pm (UTC)`
//!     (the reset time in UTC, `3:07pm` when not on the hour), preceded by
//!     `{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":<epoch s>,"rateLimitType":"five_hour","overageStatus":"rejected","isUsingOverage":false},"uuid","session_id"}`
//!   - `usage_limit_text` → the same without the `rate_limit_event` line
//!   - `usage_limit_old` → `rate_limit` / null / `Claude AI usage limit reached|<resetsAt>`
//!   - `prompt_too_long` → `invalid_request` / 400 / `Prompt is too long`, `terminal_reason`
//!     `prompt_too_long`
//! * `overloaded_midstream`: the round trips, then `error_during_execution` with `"is_error":false`,
//!   `errors:["API error: Overloaded"]`, `terminal_reason` `model_error`, no `result`; the process
//!   still counts it as a failed turn (exit 1). `max_budget`: the round trips, then
//!   `error_max_budget_usd`, `is_error` true, `errors:["Reached maximum budget ($0.01)"]`.
//! * The reset time (`resetsAt`) is `FAKE_CLAUDE_LIMITED_UNTIL` when set, else the task's start
//!   plus `FAKE_CLAUDE_RESET_IN_S` (`[[fake:reset_in=S]]`), in whole epoch seconds.
//! * Which kind a task gets is settled when it starts, first match wins:
//!   `FAKE_CLAUDE_CREDENTIALS` set and that file missing (checked at every task start, so a test
//!   can "log in" a running stream-json process by creating it) → `not_logged_in`; the wall clock
//!   before `FAKE_CLAUDE_LIMITED_UNTIL` → `FAKE_CLAUDE_LIMIT_SHAPE`; the task's number ≤
//!   `FAKE_CLAUDE_FAIL_FIRST` → `FAKE_CLAUDE_FAIL_AS`; else `[[fake:result=…]]` /
//!   `FAKE_CLAUDE_RESULT`. The task's number counts this process's tasks, or, with
//!   `FAKE_CLAUDE_COUNTER`, every task start of every process sharing that file: each start
//!   appends one byte (`O_APPEND`) and its number is the file offset after that write, which is
//!   race-free between processes.
//! * `FAKE_CLAUDE_COST` / `[[fake:cost=X]]`: `total_cost_usd` and `modelUsage.<model>.costUSD`
//!   of every result except the API failures' (which stay 0); without it 0.0012 per API call.
//! * An interrupted task (control `interrupt`, or SIGINT in stream-json mode) ends with
//!   `error_during_execution`, `errors:["Interrupted by user"]`, `terminal_reason`
//!   `aborted_streaming`. Interrupts are checked before every line (and during line delays).
//! * Crashes never print a `result`. `exit1` = exit status 1 (recorded), `sigkill` = SIGKILL to
//!   itself, `abort` = `abort()` (SIGABRT), `partial-line` = the first half of the next JSON line
//!   without a newline, flushed, then exit 1.
//! * `FAKE_CLAUDE_SPAWN_GRANDCHILD` is spawned after argument validation, before the stderr noise;
//!   it is never waited for.
//! * `FAKE_CLAUDE_STATE_DIR` holds one file `<session_id>.session` (the cwd, then each prompt of
//!   the session) per session that ran a task (unless `--no-session-persistence`). `--resume ID`
//!   needs that file with the same cwd (else `No conversation found with session ID: ID` on
//!   stderr, after an `error_during_execution` result line on stream-json output, exit 1), and
//!   restores the session's turns under a new session id, as the real CLI forks on resume;
//!   `--continue` and a valueless `--resume` pick the newest session of this cwd, or start a new
//!   one; `--session-id` of an existing file → `Error: Session ID <id> is already in use.`.
//!   Without the knob every `--resume ID` is unknown. A prompt containing `what did I ask`
//!   (any case) is answered `you asked: <the session's previous prompt>` (or `you asked nothing
//!   before`).
//! * Signals: TERM → exit 143 (unless ignored), HUP → 129, QUIT → 131 (ordinary exit statuses,
//!   recorded, after waiting at most 200 ms for a half-written stdout line); INT → exit 0 in
//!   stream-json mode (a running task is aborted first), deferred (ignored) in one-shot mode;
//!   SIGPIPE ignored: after EPIPE on stdout nothing more is printed and the normal end exits 0.
//! * Stream-json control requests: `initialize` → `{"pid":<pid>}`; `interrupt`, `set_model`,
//!   `set_permission_mode`, `set_max_thinking_tokens` → success without payload; anything else →
//!   `Unsupported control request subtype: <x>`. `--replay-user-messages` echoes each user message
//!   (client `uuid` kept, `"isReplay":true`) when its task starts, before `system/init`.
//!   `--include-partial-messages` adds one `stream_event` text delta before the final text.
//! * No `-p` with stdout a TTY (interactive mode) is refused: the fake only does print mode.
//!
//! # Directives (per task, anywhere in the prompt text; they win over the env for that task and
//! stay in the echoed text)
//!
//! `[[fake:crash]]` / `[[fake:crash=MODE]]` (die after the first assistant line; MODE as
//! `FAKE_CLAUDE_CRASH_MODE`, default from env), `[[fake:hang]]` (= `before_result`) /
//! `[[fake:hang=before_result|after_result|forever]]`, `[[fake:delay=MS]]`, `[[fake:turns=K]]`,
//! `[[fake:stderr=N]]` (N bytes of stderr during the task), `[[fake:big=N]]`,
//! `[[fake:result=KIND]]` (any kind above), `[[fake:retries=N]]`, `[[fake:reset_in=S]]`,
//! `[[fake:cost=X]]`, `[[fake:gate=PATH]]` (the result waits while PATH exists).
//!
//! Faults no sound agent has, for the daemon's robustness tests: `[[fake:nest=N]]` (an assistant
//! event whose tool input is nested N levels deep), `[[fake:double_result]]` (the result line
//! again 300 ms later), `[[fake:close_stdout]]` (close stdout after `system/init`, stay alive),
//! `[[fake:huge_cost]]` (`total_cost_usd` written as `1e400`), `[[fake:control_text=N]]` (the
//! result text is N control characters).
//!
//! # Record file (`FAKE_CLAUDE_RECORD`)
//!
//! Opened with `O_APPEND`; one `write` per JSON line:
//! `{"event":"start","pid","pgid","ppid","time_us","exe","argv":[args without argv0],"cwd","env":{"CLAUDECODE","CLAUDE_CODE_ENTRYPOINT","CLAUDE_CONFIG_DIR","ANTHROPIC_API_KEY_present"}}`,
//! `{"event":"grandchild","pid","setsid"}`, `{"event":"stdin","line"}`, `{"event":"signal","signal","pid"}`,
//! `{"event":"task_start","n","prompt"}`, `{"event":"result","n","is_error","subtype","kind"}` (`kind`:
//! the result kind the task got),
//! `{"event":"crash","n","mode","pid"}` (just before a simulated crash) and
//! `{"event":"exit","pid","code","time_us"}` (just before every voluntary exit).
//!
//! # Layout
//!
//! `main.rs` validates the command line in the real CLI's order, settles the session id, performs
//! the startup side effects and hands over to one of the two modes. One concern per module:
//!
//! | module | holds |
//! |---|---|
//! | `args` | the option table, commander-style argv parsing, the `--help` text |
//! | `cli` | the options the fake acts on, their checks, the model name |
//! | `knobs` | the `FAKE_CLAUDE_*` environment knobs |
//! | `directives` | per-task settings: knobs overridden by `[[fake:…]]` directives |
//! | `json` | the insertion-ordered JSON tree (`obj!`, `arr!`) and ids |
//! | `output` | stdout lines, the record file, usage errors, exits and exit statuses |
//! | `signals` | signal handling and the running-task state that interrupts act on |
//! | `side_effects` | the grandchild process and stderr noise |
//! | `session_store` | session files in `FAKE_CLAUDE_STATE_DIR` |
//! | `session` | the session and the JSON lines it prints (init, assistant, result), usage |
//! | `failures` | the result kinds, the API-failure shapes, which kind a task gets |
//! | `task` | running one task: the event sequence, delays, interrupts, hangs |
//! | `crash` | simulated crashes |
//! | `oneshot` | one-shot mode and its stdin wait |
//! | `stream` | stream-json mode: the stdin reader, control requests, the task loop |

mod args;
mod cli;
mod crash;
mod directives;
mod failures;
mod json;
mod knobs;
mod oneshot;
mod output;
mod session;
mod session_store;
mod side_effects;
mod signals;
mod stream;
mod task;

use std::env;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use crate::args::{parse_argv, HELP};
use crate::cli::{check_mcp_configs, is_valid_uuid, model_name, Cli, Format};
use crate::json::{arr, new_uuid, null, obj};
use crate::knobs::{Hang, Knobs};
use crate::oneshot::run_oneshot;
use crate::output::{emit, exit_now, fail, hang_forever, open_recorder, record_start};
use crate::session::Session;
use crate::session_store::{latest_session, session_exists, session_history};
use crate::side_effects::{spawn_grandchild, stderr_noise};
use crate::signals::{install_signals, STREAM_MODE};
use crate::stream::run_stream;

fn main() {
    let knobs = Knobs::from_env();
    if let Some(path) = &knobs.record {
        open_recorder(path);
    }
    install_signals(knobs.ignore_sigterm);

    let mut args = env::args_os().map(|a| a.to_string_lossy().into_owned());
    let exe = args.next().unwrap_or_default();
    let argv: Vec<String> = args.collect();
    let cwd = env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    record_start(&argv, &exe, &cwd);

    if knobs.startup_delay_ms > 0 {
        thread::sleep(Duration::from_millis(knobs.startup_delay_ms));
    }

    // --- commander parsing and the real CLI's validation, in that order ---
    let parsed = parse_argv(&argv, &knobs.version);
    if parsed.unknown.iter().any(|a| a == "-h" || a == "--help") {
        let _ = io::stdout().lock().write_all(HELP.as_bytes());
        exit_now(0);
    }
    if let Some(first) = parsed.unknown.first() {
        fail(&format!("error: unknown option '{first}'"));
    }
    let cli = Cli::from_parsed(&parsed);
    let print_mode = cli.print || !io::stdout().is_terminal();
    if !print_mode {
        fail("fake-claude: interactive mode is not supported; use -p/--print");
    }
    if let Some(id) = &cli.session_id {
        if !is_valid_uuid(id) {
            fail("Error: Invalid session ID. Must be a valid UUID.");
        }
    }
    if knobs.root_check && cli.bypass() && !knobs.is_sandbox {
        // SAFETY: geteuid() has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            fail("--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons");
        }
    }
    if cli.stream_input && cli.output != Format::StreamJson {
        fail("Error: --input-format=stream-json requires output-format=stream-json.");
    }
    if cli.output == Format::StreamJson && !cli.verbose {
        fail("Error: When using --print, --output-format=stream-json requires --verbose");
    }
    check_mcp_configs(&cli.mcp_configs, &cwd);

    // --- session id ---
    let state_dir = knobs.state_dir.clone();
    let resume_id = match &cli.resume {
        Some(Some(id)) => {
            if state_dir
                .as_deref()
                .and_then(|d| session_history(d, id, &cwd))
                .is_none()
            {
                no_conversation(id, cli.fork, cli.output);
            }
            Some(id.clone())
        }
        // `--resume` without an id and `--continue`: the latest session of this cwd, if any.
        Some(None) => state_dir.as_deref().and_then(|d| latest_session(d, &cwd)),
        None if cli.continue_ => state_dir.as_deref().and_then(|d| latest_session(d, &cwd)),
        None => None,
    };
    // A resumed session keeps its turns under a new id, as the real CLI forks on `--resume`
    // (`--continue` keeps the id).
    let history = resume_id
        .as_deref()
        .zip(state_dir.as_deref())
        .and_then(|(id, d)| session_history(d, id, &cwd))
        .unwrap_or_default();
    let session_id = match resume_id {
        Some(id) if !cli.fork && cli.resume.is_none() => id,
        _ => {
            let id = cli.session_id.clone().unwrap_or_else(new_uuid);
            if cli.session_id.is_some()
                && state_dir.as_deref().is_some_and(|d| session_exists(d, &id))
            {
                fail(&format!("Error: Session ID {id} is already in use."));
            }
            id
        }
    };

    // --- startup side effects ---
    if let Some(cmd) = &knobs.grandchild {
        spawn_grandchild(cmd, knobs.grandchild_setsid);
    }
    if knobs.stderr_bytes > 0 {
        stderr_noise(knobs.stderr_bytes);
    }
    STREAM_MODE.store(cli.stream_input, Ordering::SeqCst);
    if matches!(knobs.hang, Some(Hang::Startup | Hang::Forever)) {
        hang_forever();
    }

    let mut session = Session {
        format: cli.output,
        session_id,
        cwd,
        model: model_name(cli.model.as_deref()),
        tools: cli.tools.clone().unwrap_or_else(|| {
            ["Bash", "Edit", "Read"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        }),
        permission_mode: if cli.skip_permissions {
            "bypassPermissions".to_owned()
        } else {
            cli.permission_mode.clone()
        },
        api_key_source: if env::var_os("ANTHROPIC_API_KEY").is_some() {
            "ANTHROPIC_API_KEY"
        } else {
            "none"
        },
        max_turns: cli.max_turns,
        include_partial: cli.include_partial,
        persist_dir: if cli.no_persist { None } else { state_dir },
        tasks_started: 0,
        history,
        knobs,
    };

    if cli.stream_input {
        run_stream(session, cli.replay_user)
    } else {
        run_oneshot(&mut session, cli.prompt.as_deref().unwrap_or(""))
    }
}

/// `--resume` of a session this cwd never had, as claude 2.1.197 answers it: with
/// `--output-format stream-json` a `result` line (`error_during_execution`, claude's words in
/// `errors`, the session id it would have used) comes first; the words go to stderr in every
/// format; exit 1.
fn no_conversation(id: &str, fork: bool, output: Format) -> ! {
    let words = format!("No conversation found with session ID: {id}");
    if output == Format::StreamJson {
        let session_id = if fork { new_uuid() } else { id.to_owned() };
        emit(&obj! {
            "type": "result",
            "subtype": "error_during_execution",
            "duration_ms": 0,
            "duration_api_ms": 0,
            "is_error": true,
            "num_turns": 0,
            "stop_reason": null(),
            "session_id": session_id.as_str(),
            "total_cost_usd": 0,
            "usage": obj! {
                "input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
                "server_tool_use": obj! {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": "standard",
                "cache_creation": obj! {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                "inference_geo": "",
                "iterations": arr![],
                "speed": "standard",
            },
            "modelUsage": obj! {},
            "permission_denials": arr![],
            "uuid": new_uuid().as_str(),
            "errors": arr![words.as_str()],
        });
    }
    fail(&words)
}
