//! `fake-claude`: a faithful, network-free fake of Anthropic's `claude` CLI (Claude Code 2.1.197)
//! for the integration tests and the demo of `mister-smith`.
//!
//! It mirrors what the real binary does in print mode (see `/work/shared/reference/claude-cli.md`):
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
//!   `done: <prompt>`. Exit 0, or 1 when the result has `is_error`.
//! * Stream-json: `fake-claude -p --input-format stream-json --output-format stream-json --verbose`.
//!   Prints nothing until a stdin line arrives; answers `control_request`s at once (also mid-turn);
//!   runs `user` messages one after another; on stdin EOF finishes the queue and exits 1 if the last
//!   result had `is_error`, else 0.
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
//! | `FAKE_CLAUDE_RESULT` | `success`, `api_error`, `max_turns`, `during_execution` (`success`) | result shape |
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
//!
//! Details:
//! * `FAKE_CLAUDE_HANG`: `startup` and `forever` behave the same: after startup (grandchild spawned,
//!   stderr noise written) print nothing, read nothing, answer nothing, stay alive until a signal.
//!   `before_result` prints each task's events up to (not including) its `result` line, then hangs
//!   for good (stdin EOF, `interrupt` and SIGINT don't end it; TERM/HUP do). `after_result` prints
//!   the whole task but then never exits, not even on stdin EOF (stream-json mode keeps serving
//!   further tasks until EOF, then hangs).
//! * `FAKE_CLAUDE_RESULT`: `api_error` = assistant line with `"error":"authentication_failed"` and
//!   model `<synthetic>`, then `subtype:"success","is_error":true,"result":"Not logged in · Please
//!   run /login"`. `max_turns` = `error_max_turns` with cap = `--max-turns` if given, else K
//!   (`errors:["Reached maximum number of turns (cap)"]`, `num_turns` cap+1, `terminal_reason`
//!   `max_turns`, no `result`). `during_execution` = the tool round trips, then
//!   `error_during_execution` with `errors:["fake-claude: simulated error during execution"]`,
//!   `terminal_reason` `model_error`. Independently of the knob, `--max-turns N` with K+1 > N
//!   prints N round trips and then the `error_max_turns` result.
//! * An interrupted task (control `interrupt`, or SIGINT in stream-json mode) ends with
//!   `error_during_execution`, `errors:["Interrupted by user"]`, `terminal_reason`
//!   `aborted_streaming`. Interrupts are checked before every line (and during line delays).
//! * Crashes never print a `result`. `exit1` = exit status 1 (recorded), `sigkill` = SIGKILL to
//!   itself, `abort` = `abort()` (SIGABRT), `partial-line` = the first half of the next JSON line
//!   without a newline, flushed, then exit 1.
//! * `FAKE_CLAUDE_SPAWN_GRANDCHILD` is spawned after argument validation, before the stderr noise;
//!   it is never waited for.
//! * `FAKE_CLAUDE_STATE_DIR` holds one file `<session_id>.session` (content: the cwd) per session
//!   that ran a task (unless `--no-session-persistence`). `--resume ID` needs that file with the
//!   same cwd (else `No conversation found with session ID: ID`); `--continue` and a valueless
//!   `--resume` pick the newest session of this cwd, or start a new one; `--session-id` of an
//!   existing file → `Error: Session ID <id> is already in use.`. Without the knob every
//!   `--resume ID` is unknown.
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

//! # Directives (per task, anywhere in the prompt text; they win over the env for that task and
//! stay in the echoed text)
//!
//! `[[fake:crash]]` / `[[fake:crash=MODE]]` (die after the first assistant line; MODE as
//! `FAKE_CLAUDE_CRASH_MODE`, default from env), `[[fake:hang]]` (= `before_result`) /
//! `[[fake:hang=before_result|after_result|forever]]`, `[[fake:delay=MS]]`, `[[fake:turns=K]]`,
//! `[[fake:stderr=N]]` (N bytes of stderr during the task), `[[fake:big=N]]`,
//! `[[fake:result=success|api_error|max_turns|during_execution]]`, `[[fake:retries=N]]`.
//!
//! # Record file (`FAKE_CLAUDE_RECORD`)
//!
//! Opened with `O_APPEND`; one `write` per JSON line:
//! `{"event":"start","pid","pgid","ppid","time_us","exe","argv":[args without argv0],"cwd","env":{"CLAUDECODE","CLAUDE_CODE_ENTRYPOINT","CLAUDE_CONFIG_DIR","ANTHROPIC_API_KEY_present"}}`,
//! `{"event":"grandchild","pid","setsid"}`, `{"event":"stdin","line"}`, `{"event":"signal","signal","pid"}`,
//! `{"event":"task_start","n","prompt"}`, `{"event":"result","n","is_error","subtype"}`,
//! `{"event":"crash","n","mode","pid"}` (just before a simulated crash) and
//! `{"event":"exit","pid","code","time_us"}` (just before every voluntary exit).

use std::collections::VecDeque;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

const DEFAULT_VERSION: &str = "2.1.197";
const DEFAULT_MODEL: &str = "claude-sonnet-5";
const NOT_LOGGED_IN: &str = "Not logged in · Please run /login";

// ---------------------------------------------------------------------------------------------
// Ordered JSON. serde_json's `Map` sorts keys (no `preserve_order` feature here); the real CLI
// prints `type` first, so events are built with this small insertion-ordered tree instead.
// ---------------------------------------------------------------------------------------------

/// A JSON value whose objects keep their keys in insertion order.
enum J {
    /// Any plain value (also used to embed client JSON verbatim).
    Raw(Value),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl Serialize for J {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Raw(v) => v.serialize(s),
            J::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            J::Obj(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

macro_rules! impl_from_for_j {
    ($($t:ty),*) => {$(
        impl From<$t> for J {
            fn from(v: $t) -> J {
                J::Raw(Value::from(v))
            }
        }
    )*};
}
impl_from_for_j!(&str, String, bool, u32, u64, i32, usize, f64, Value);

impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}

impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map_or(J::Raw(Value::Null), Into::into)
    }
}

/// `obj! { "k": v, ... }` builds an ordered object.
macro_rules! obj {
    ($($k:literal : $v:expr),* $(,)?) => { J::Obj(vec![$(($k, J::from($v))),*]) };
}

/// `arr![a, b]` builds an array.
macro_rules! arr {
    ($($v:expr),* $(,)?) => { J::Arr(vec![$(J::from($v)),*]) };
}

fn null() -> J {
    J::Raw(Value::Null)
}

fn to_line(j: &J) -> String {
    serde_json::to_string(j).unwrap_or_else(|_| "{}".to_owned())
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An id like the API's `msg_01…` / `toolu_01…`.
fn api_id(prefix: &str) -> String {
    format!(
        "{prefix}_01{}",
        &uuid::Uuid::new_v4().simple().to_string()[..22]
    )
}

// ---------------------------------------------------------------------------------------------
// Process-wide state shared with the signal and stdin threads.
// ---------------------------------------------------------------------------------------------

/// Serialises stdout lines (control responses come from the stdin thread, events from the worker)
/// and lets an exiting thread wait until no line is half written.
static OUT: Mutex<()> = Mutex::new(());
/// Set once a stdout write failed (EPIPE): output stops, the process carries on.
static STDOUT_BROKEN: AtomicBool = AtomicBool::new(false);
/// The record file, when `FAKE_CLAUDE_RECORD` is set.
static RECORDER: OnceLock<Mutex<File>> = OnceLock::new();
/// True in `--input-format stream-json` mode (SIGINT exits there instead of being deferred).
static STREAM_MODE: AtomicBool = AtomicBool::new(false);
/// Number of the task being run, 0 when idle.
static CURRENT_TASK: AtomicU64 = AtomicU64::new(0);
/// Number of the task that must abort (interrupt); compared with the running task's number.
static ABORT_TASK: AtomicU64 = AtomicU64::new(0);
/// Set by SIGINT in stream mode: the worker must not start another task.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn pid() -> u32 {
    std::process::id()
}

/// Appends one JSON line to the record file (one `write` on an `O_APPEND` file).
fn record(j: J) {
    if let Some(file) = RECORDER.get() {
        let mut line = to_line(&j);
        line.push('\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
    }
}

/// Writes one stdout line with a single `write_all` of line + `\n`, then flushes.
/// After the first failure (EPIPE: the reader went away) nothing more is written.
fn emit_str(line: &str) {
    if STDOUT_BROKEN.load(Ordering::SeqCst) {
        return;
    }
    let _guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if out
        .write_all(buf.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        STDOUT_BROKEN.store(true, Ordering::SeqCst);
    }
}

fn emit(j: &J) {
    emit_str(&to_line(j));
}

/// Voluntary exit: records it, waits briefly so no stdout line is cut in half, then exits.
fn exit_now(code: i32) -> ! {
    record(obj! {"event": "exit", "pid": pid(), "code": code, "time_us": now_us()});
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        if let Ok(_guard) = OUT.try_lock() {
            let _ = io::stdout().flush();
            std::process::exit(code);
        }
        if Instant::now() >= deadline {
            std::process::exit(code);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Usage / configuration error: message on stderr, exit 1.
fn fail(msg: &str) -> ! {
    let _ = writeln!(io::stderr().lock(), "{msg}");
    exit_now(1)
}

/// Stops doing anything but stays alive (signals are still handled on their thread).
fn hang_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

// ---------------------------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hang {
    Startup,
    Forever,
    BeforeResult,
    AfterResult,
}

impl Hang {
    fn parse(s: &str) -> Option<Hang> {
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
enum CrashMode {
    Exit1,
    Sigkill,
    Abort,
    PartialLine,
}

impl CrashMode {
    fn parse(s: &str) -> Option<CrashMode> {
        match s {
            "exit1" => Some(CrashMode::Exit1),
            "sigkill" => Some(CrashMode::Sigkill),
            "abort" => Some(CrashMode::Abort),
            "partial-line" => Some(CrashMode::PartialLine),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CrashMode::Exit1 => "exit1",
            CrashMode::Sigkill => "sigkill",
            CrashMode::Abort => "abort",
            CrashMode::PartialLine => "partial-line",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ResultKind {
    Success,
    ApiError,
    MaxTurns,
    DuringExecution,
}

impl ResultKind {
    fn parse(s: &str) -> Option<ResultKind> {
        match s {
            "success" => Some(ResultKind::Success),
            "api_error" => Some(ResultKind::ApiError),
            "max_turns" => Some(ResultKind::MaxTurns),
            "during_execution" => Some(ResultKind::DuringExecution),
            _ => None,
        }
    }
}

/// Everything read from `FAKE_CLAUDE_*` (and `IS_SANDBOX`).
struct Knobs {
    version: String,
    startup_delay_ms: u64,
    /// `None` = wait forever.
    stdin_wait: Option<Duration>,
    turns: u32,
    line_delay_ms: u64,
    result: ResultKind,
    exit_code: Option<i32>,
    api_retries: u32,
    crash_after: Option<u64>,
    crash_mode: CrashMode,
    hang: Option<Hang>,
    ignore_sigterm: bool,
    stderr_bytes: u64,
    big_line_bytes: u64,
    grandchild: Option<String>,
    grandchild_setsid: bool,
    record: Option<String>,
    state_dir: Option<PathBuf>,
    root_check: bool,
    is_sandbox: bool,
}

fn env_str(name: &str) -> Option<String> {
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

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    env_with(name, |s| s.parse().ok())
}

impl Knobs {
    fn from_env() -> Knobs {
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
            state_dir: env_str("FAKE_CLAUDE_STATE_DIR")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            root_check: env_flag("FAKE_CLAUDE_ROOT_CHECK"),
            is_sandbox: env_flag("IS_SANDBOX"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Argument parsing, modelled on commander.js (which the real CLI uses).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    /// Boolean flag.
    Flag,
    /// `<value>`: always takes the next token, even one starting with `-`.
    Required,
    /// `[value]`: takes the next token unless it looks like an option.
    Optional,
    /// `<values...>`: like `Required`, then keeps taking tokens up to the next `-`-prefixed one.
    Variadic,
}

struct OptSpec {
    short: Option<char>,
    longs: &'static [&'static str],
    /// Key under which values are stored.
    key: &'static str,
    arity: Arity,
    /// The flags as commander prints them in error messages.
    display: &'static str,
    choices: &'static [&'static str],
}

const fn opt(
    short: Option<char>,
    longs: &'static [&'static str],
    arity: Arity,
    display: &'static str,
) -> OptSpec {
    OptSpec {
        short,
        longs,
        key: longs[0],
        arity,
        display,
        choices: &[],
    }
}

const fn choice(
    long: &'static [&'static str],
    display: &'static str,
    choices: &'static [&'static str],
) -> OptSpec {
    OptSpec {
        short: None,
        longs: long,
        key: long[0],
        arity: Arity::Required,
        display,
        choices,
    }
}

use Arity::{Flag, Optional, Required, Variadic};

/// Every option the fake accepts (`-h/--help` is handled like commander: outside this table).
const OPTIONS: &[OptSpec] = &[
    opt(Some('p'), &["--print"], Flag, "-p, --print"),
    choice(
        &["--output-format"],
        "--output-format <format>",
        &["text", "json", "stream-json"],
    ),
    choice(
        &["--input-format"],
        "--input-format <format>",
        &["text", "stream-json"],
    ),
    opt(None, &["--verbose"], Flag, "--verbose"),
    opt(None, &["--max-turns"], Required, "--max-turns <turns>"),
    opt(None, &["--model"], Required, "--model <model>"),
    opt(
        None,
        &["--allowedTools", "--allowed-tools"],
        Variadic,
        "--allowedTools, --allowed-tools <tools...>",
    ),
    opt(
        None,
        &["--disallowedTools", "--disallowed-tools"],
        Variadic,
        "--disallowedTools, --disallowed-tools <tools...>",
    ),
    opt(None, &["--tools"], Variadic, "--tools <tools...>"),
    choice(
        &["--permission-mode"],
        "--permission-mode <mode>",
        &[
            "acceptEdits",
            "auto",
            "bypassPermissions",
            "default",
            "dontAsk",
            "plan",
        ],
    ),
    opt(
        None,
        &["--append-system-prompt"],
        Required,
        "--append-system-prompt <prompt>",
    ),
    opt(
        None,
        &["--system-prompt"],
        Required,
        "--system-prompt <prompt>",
    ),
    opt(
        None,
        &["--append-system-prompt-file"],
        Required,
        "--append-system-prompt-file <file>",
    ),
    opt(
        None,
        &["--system-prompt-file"],
        Required,
        "--system-prompt-file <file>",
    ),
    opt(Some('r'), &["--resume"], Optional, "-r, --resume [value]"),
    opt(Some('c'), &["--continue"], Flag, "-c, --continue"),
    opt(None, &["--fork-session"], Flag, "--fork-session"),
    opt(None, &["--session-id"], Required, "--session-id <uuid>"),
    opt(
        None,
        &["--mcp-config"],
        Variadic,
        "--mcp-config <configs...>",
    ),
    opt(None, &["--strict-mcp-config"], Flag, "--strict-mcp-config"),
    opt(
        None,
        &["--dangerously-skip-permissions"],
        Flag,
        "--dangerously-skip-permissions",
    ),
    opt(
        None,
        &["--allow-dangerously-skip-permissions"],
        Flag,
        "--allow-dangerously-skip-permissions",
    ),
    opt(
        None,
        &["--include-partial-messages"],
        Flag,
        "--include-partial-messages",
    ),
    opt(
        None,
        &["--include-hook-events"],
        Flag,
        "--include-hook-events",
    ),
    opt(
        None,
        &["--replay-user-messages"],
        Flag,
        "--replay-user-messages",
    ),
    opt(
        None,
        &["--no-session-persistence"],
        Flag,
        "--no-session-persistence",
    ),
    opt(None, &["--bare"], Flag, "--bare"),
    opt(None, &["--settings"], Required, "--settings <file-or-json>"),
    opt(
        None,
        &["--setting-sources"],
        Required,
        "--setting-sources <sources>",
    ),
    opt(None, &["--add-dir"], Variadic, "--add-dir <directories...>"),
    opt(None, &["--betas"], Variadic, "--betas <betas...>"),
    opt(None, &["--file"], Variadic, "--file <specs...>"),
    opt(
        None,
        &["--fallback-model"],
        Required,
        "--fallback-model <model>",
    ),
    opt(
        None,
        &["--max-budget-usd"],
        Required,
        "--max-budget-usd <amount>",
    ),
    opt(None, &["--json-schema"], Required, "--json-schema <schema>"),
    opt(
        None,
        &["--permission-prompt-tool"],
        Required,
        "--permission-prompt-tool <tool>",
    ),
    opt(None, &["--agents"], Required, "--agents <json>"),
    opt(None, &["--agent"], Required, "--agent <agent>"),
    opt(None, &["--plugin-dir"], Variadic, "--plugin-dir <paths...>"),
    opt(
        None,
        &["--disable-slash-commands"],
        Flag,
        "--disable-slash-commands",
    ),
    opt(Some('d'), &["--debug"], Optional, "-d, --debug [filter]"),
    opt(None, &["--mcp-debug"], Flag, "--mcp-debug"),
    opt(None, &["--ide"], Flag, "--ide"),
    opt(Some('v'), &["--version"], Flag, "-v, --version"),
];

fn find_option(token: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| {
        o.longs.contains(&token)
            || o.short.is_some_and(|c| {
                token.len() == 2 && token.strip_prefix('-') == Some(&*c.to_string())
            })
    })
}

fn find_short(c: char) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.short == Some(c))
}

/// commander's `maybeOption`.
fn looks_like_option(arg: &str) -> bool {
    arg.len() > 1 && arg.starts_with('-')
}

/// Raw result of parsing: values per option key (`None` for flags / absent optional values),
/// positional operands and unknown tokens.
#[derive(Default)]
struct Parsed {
    values: Vec<(&'static str, Option<String>)>,
    operands: Vec<String>,
    unknown: Vec<String>,
}

impl Parsed {
    fn has(&self, key: &str) -> bool {
        self.values.iter().any(|(k, _)| *k == key)
    }

    /// Last value given for `key` (commander keeps the last one for non-variadic options).
    fn last(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    /// commander's `option:<name>` event: validates choices, handles `--version` at once.
    fn set(&mut self, spec: &'static OptSpec, value: Option<String>, version: &str) {
        if spec.key == "--version" {
            let _ = writeln!(io::stdout().lock(), "{version} (Claude Code)");
            exit_now(0);
        }
        if let Some(v) = &value {
            if !spec.choices.is_empty() && !spec.choices.contains(&v.as_str()) {
                fail(&format!(
                    "error: option '{}' argument '{}' is invalid. Allowed choices are {}.",
                    spec.display,
                    v,
                    spec.choices.join(", ")
                ));
            }
        }
        self.values.push((spec.key, value));
    }
}

/// Parses argv (without argv0) the way commander's `parseOptions` does. Exits on errors that
/// commander reports while parsing (missing argument, bad choice) and on `--version`.
fn parse_argv(argv: &[String], version: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut args: VecDeque<String> = argv.iter().cloned().collect();
    let mut active_variadic: Option<&'static OptSpec> = None;
    let mut to_unknown = false;

    while let Some(arg) = args.pop_front() {
        if arg == "--" {
            let dest = if to_unknown {
                p.unknown.push(arg);
                &mut p.unknown
            } else {
                &mut p.operands
            };
            dest.extend(args.drain(..));
            break;
        }
        if let Some(spec) = active_variadic {
            if !looks_like_option(&arg) {
                p.set(spec, Some(arg), version);
                continue;
            }
        }
        active_variadic = None;

        if looks_like_option(&arg) {
            if let Some(spec) = find_option(&arg) {
                match spec.arity {
                    Required | Variadic => match args.pop_front() {
                        Some(v) => p.set(spec, Some(v), version),
                        None => fail(&format!(
                            "error: option '{}' argument missing",
                            spec.display
                        )),
                    },
                    Optional => {
                        let v = if args.front().is_some_and(|a| !looks_like_option(a)) {
                            args.pop_front()
                        } else {
                            None
                        };
                        p.set(spec, v, version);
                    }
                    Flag => p.set(spec, None, version),
                }
                if spec.arity == Variadic {
                    active_variadic = Some(spec);
                }
                continue;
            }
        }

        // Combined short options: `-pc`, `-rSESSION`.
        if arg.len() > 2 && arg.starts_with('-') && !arg.starts_with("--") {
            let mut chars = arg[1..].chars();
            if let Some(spec) = chars.next().and_then(find_short) {
                let rest: String = chars.collect();
                if spec.arity == Flag {
                    p.set(spec, None, version);
                    args.push_front(format!("-{rest}"));
                } else {
                    p.set(spec, Some(rest), version);
                }
                continue;
            }
        }

        // `--flag=value` (only for options that take a value; never starts a variadic run).
        if let Some(eq) = arg.find('=') {
            if arg.starts_with("--") && eq > 2 {
                if let Some(spec) = find_option(&arg[..eq]).filter(|s| s.arity != Flag) {
                    p.set(spec, Some(arg[eq + 1..].to_owned()), version);
                    continue;
                }
            }
        }

        // Unknown option: it and everything after it (except known options) is "unknown".
        if looks_like_option(&arg) {
            to_unknown = true;
        }
        if to_unknown {
            p.unknown.push(arg);
        } else {
            p.operands.push(arg);
        }
    }
    p
}

const HELP: &str = "Usage: claude [options] [command] [prompt]

Claude Code (fake-claude test double) - starts an interactive session by default, use -p/--print
for non-interactive output

Arguments:
  prompt                                            Your prompt

Options:
  -p, --print                                       Print response and exit (useful for pipes)
  --output-format <format>                          \"text\", \"json\" or \"stream-json\" (with --print)
  --input-format <format>                           \"text\" or \"stream-json\" (with --print)
  --verbose                                         Override verbose mode setting from config
  --include-partial-messages                        Include partial message chunks (stream-json)
  --replay-user-messages                            Re-emit user messages from stdin on stdout
  --model <model>                                   Model for the current session
  --allowedTools, --allowed-tools <tools...>        Tool names to allow
  --disallowedTools, --disallowed-tools <tools...>  Tool names to deny
  --tools <tools...>                                Built-in tools available (\"\" = none)
  --permission-mode <mode>                          acceptEdits, auto, bypassPermissions, default,
                                                    dontAsk, plan
  --dangerously-skip-permissions                    Bypass all permission checks
  --append-system-prompt <prompt>                   Append a system prompt
  --system-prompt <prompt>                          System prompt to use for the session
  --mcp-config <configs...>                         Load MCP servers from JSON files or strings
  --strict-mcp-config                               Only use MCP servers from --mcp-config
  --settings <file-or-json>                         Settings file or JSON string
  --setting-sources <sources>                       user, project, local
  --add-dir <directories...>                        Additional directories to allow tool access to
  -c, --continue                                    Continue the most recent conversation
  -r, --resume [value]                              Resume a conversation by session ID
  --fork-session                                    When resuming, create a new session ID
  --session-id <uuid>                               Use a specific session ID
  --no-session-persistence                          Do not save the session to disk
  --bare                                            Minimal mode
  -v, --version                                     Output the version number
  -h, --help                                        Display help for command
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    StreamJson,
}

/// The options the fake acts on.
struct Cli {
    print: bool,
    output: Format,
    stream_input: bool,
    verbose: bool,
    max_turns: Option<u32>,
    model: Option<String>,
    tools: Option<Vec<String>>,
    permission_mode: String,
    skip_permissions: bool,
    /// `Some(None)` = `--resume` without an id.
    resume: Option<Option<String>>,
    continue_: bool,
    fork: bool,
    session_id: Option<String>,
    mcp_configs: Vec<String>,
    replay_user: bool,
    include_partial: bool,
    no_persist: bool,
    prompt: Option<String>,
}

impl Cli {
    fn from_parsed(p: &Parsed) -> Cli {
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

    fn bypass(&self) -> bool {
        self.skip_permissions || self.permission_mode == "bypassPermissions"
    }
}

fn is_valid_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Session store (`FAKE_CLAUDE_STATE_DIR`): one file `<id>.session` per session, holding the cwd.
// ---------------------------------------------------------------------------------------------

fn session_path(dir: &Path, id: &str) -> Option<PathBuf> {
    let safe = !id.is_empty() && !id.contains(['/', '\\', '\0']) && id != "." && id != "..";
    safe.then(|| dir.join(format!("{id}.session")))
}

fn session_exists(dir: &Path, id: &str) -> bool {
    session_path(dir, id).is_some_and(|p| p.is_file())
}

/// A session is resumable from the cwd it was created in (as with the real CLI).
fn session_resumable(dir: &Path, id: &str, cwd: &str) -> bool {
    session_path(dir, id)
        .and_then(|p| fs::read_to_string(p).ok())
        .is_some_and(|c| c == cwd)
}

fn latest_session(dir: &Path, cwd: &str) -> Option<String> {
    let mut best: Option<(SystemTime, String)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".session"))
        else {
            continue;
        };
        if fs::read_to_string(&path).ok().as_deref() != Some(cwd) {
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| mtime >= *t) {
            best = Some((mtime, id.to_owned()));
        }
    }
    best.map(|(_, id)| id)
}

// ---------------------------------------------------------------------------------------------
// Startup helpers: signals, grandchild, stderr noise, record start.
// ---------------------------------------------------------------------------------------------

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "TERM",
        SIGINT => "INT",
        SIGHUP => "HUP",
        SIGQUIT => "QUIT",
        _ => "OTHER",
    }
}

/// Handles TERM/INT/HUP/QUIT on a dedicated thread, like the real CLI (SIGPIPE stays ignored, as
/// the Rust runtime sets it up, so a closed stdout gives EPIPE instead of killing us).
fn install_signals(ignore_sigterm: bool) {
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT]) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "fake-claude: cannot install signal handlers: {e}"
            );
            return;
        }
    };
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                record(obj! {"event": "signal", "signal": signal_name(sig), "pid": pid()});
                match sig {
                    SIGTERM if ignore_sigterm => {}
                    SIGTERM => exit_now(143),
                    SIGHUP => exit_now(129),
                    SIGQUIT => exit_now(131),
                    SIGINT if STREAM_MODE.load(Ordering::SeqCst) => on_stream_sigint(),
                    // One-shot mode: SIGINT is deferred (the task runs to its normal end).
                    _ => {}
                }
            }
        });
    if let Err(e) = spawned {
        let _ = writeln!(io::stderr(), "fake-claude: cannot start signal thread: {e}");
    }
}

/// SIGINT in stream-json mode: exit 0; a running task is aborted first (given up to 2 s to print
/// its aborted `result`).
fn on_stream_sigint() -> ! {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let running = CURRENT_TASK.load(Ordering::SeqCst);
    if running != 0 {
        ABORT_TASK.store(running, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while CURRENT_TASK.load(Ordering::SeqCst) == running && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
    exit_now(0)
}

fn open_recorder(path: &str) {
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => {
            let _ = RECORDER.set(Mutex::new(f));
        }
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "fake-claude: cannot open record file {path}: {e}"
            );
        }
    }
}

fn record_start(argv: &[String], exe: &str, cwd: &str) {
    // SAFETY: getpgrp() has no preconditions and cannot fail.
    let pgid = unsafe { libc::getpgrp() };
    let env_of = |name: &str| J::from(env_str(name));
    record(obj! {
        "event": "start",
        "pid": pid(),
        "pgid": pgid,
        "ppid": std::os::unix::process::parent_id(),
        "time_us": now_us(),
        "exe": exe,
        "argv": J::Arr(argv.iter().map(|a| J::from(a.as_str())).collect()),
        "cwd": cwd,
        "env": obj! {
            "CLAUDECODE": env_of("CLAUDECODE"),
            "CLAUDE_CODE_ENTRYPOINT": env_of("CLAUDE_CODE_ENTRYPOINT"),
            "CLAUDE_CONFIG_DIR": env_of("CLAUDE_CONFIG_DIR"),
            "ANTHROPIC_API_KEY_present": env::var_os("ANTHROPIC_API_KEY").is_some(),
        },
    });
}

/// Spawns `FAKE_CLAUDE_SPAWN_GRANDCHILD` as our child (same process group unless `setsid`).
/// It is never waited for: it must outlive us unless the supervisor cleans up.
fn spawn_grandchild(cmdline: &str, setsid: bool) {
    let mut parts = cmdline.split_whitespace();
    let Some(program) = parts.next() else { return };
    let mut cmd = Command::new(program);
    cmd.args(parts)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if setsid {
        // SAFETY: the closure runs in the forked child before exec and only calls setsid(),
        // which is async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        Ok(child) => record(obj! {"event": "grandchild", "pid": child.id(), "setsid": setsid}),
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "fake-claude: cannot spawn grandchild {cmdline:?}: {e}"
            );
        }
    }
}

/// Writes exactly `n` bytes to stderr as lines of 100 bytes (`fake-claude: noise 000001 xxx…\n`).
/// Blocks when nobody drains stderr, which is the point.
fn stderr_noise(n: u64) {
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let mut left = n;
    let mut i = 0u64;
    while left > 0 {
        i += 1;
        let mut line = format!("fake-claude: noise {i:06} ");
        while line.len() < 99 {
            line.push('x');
        }
        let take = usize::try_from(left.min(100)).unwrap_or(100);
        let mut bytes = line.into_bytes();
        bytes.truncate(take - 1);
        bytes.push(b'\n');
        if err.write_all(&bytes).is_err() {
            return;
        }
        left -= take as u64;
    }
    let _ = err.flush();
}

// ---------------------------------------------------------------------------------------------
// stdin
// ---------------------------------------------------------------------------------------------

/// Text input mode: wait up to `wait` for the first byte, then read to EOF. Returns the data
/// (lossy UTF-8), or "" on immediate EOF or after the timeout warning.
fn read_oneshot_stdin(wait: Option<Duration>) -> String {
    let (tx, rx) = crossbeam_channel::unbounded::<Option<Vec<u8>>>();
    let spawned = thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    if spawned.is_err() {
        return String::new();
    }
    let first = match wait {
        None => rx.recv().ok(),
        Some(d) => match rx.recv_timeout(d) {
            Ok(v) => Some(v),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let secs = d.as_secs_f64();
                let _ = writeln!(
                    io::stderr(),
                    "Warning: no stdin data received in {secs}s, proceeding without it. If piping \
                     from a slow command, redirect stdin explicitly: < /dev/null to skip, or wait \
                     longer."
                );
                return String::new();
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
        },
    };
    let mut data = Vec::new();
    if let Some(Some(chunk)) = first {
        data.extend_from_slice(&chunk);
        while let Ok(Some(chunk)) = rx.recv() {
            data.extend_from_slice(&chunk);
        }
    }
    let text = String::from_utf8_lossy(&data).into_owned();
    for line in text.lines() {
        record(obj! {"event": "stdin", "line": line});
    }
    text
}

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

// ---------------------------------------------------------------------------------------------
// Running a task
// ---------------------------------------------------------------------------------------------

/// Per-task settings: env knobs overridden by `[[fake:…]]` directives in the prompt.
struct TaskCfg {
    turns: u32,
    delay: Duration,
    hang: Option<Hang>,
    crash: Option<CrashMode>,
    stderr_bytes: u64,
    big: u64,
    result: ResultKind,
    retries: u32,
}

/// `[[fake:NAME]]` / `[[fake:NAME=VALUE]]` occurrences, in order.
fn directives(prompt: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("[[fake:") {
        let after = &rest[start + 7..];
        let Some(end) = after.find("]]") else { break };
        let body = after[..end].trim();
        match body.split_once('=') {
            Some((k, v)) => out.push((k.trim().to_ascii_lowercase(), Some(v.trim().to_owned()))),
            None => out.push((body.to_ascii_lowercase(), None)),
        }
        rest = &after[end + 2..];
    }
    out
}

impl TaskCfg {
    fn new(k: &Knobs, prompt: &str) -> TaskCfg {
        let mut cfg = TaskCfg {
            turns: k.turns,
            delay: Duration::from_millis(k.line_delay_ms),
            hang: k
                .hang
                .filter(|h| matches!(h, Hang::BeforeResult | Hang::AfterResult)),
            crash: None,
            stderr_bytes: 0,
            big: k.big_line_bytes,
            result: k.result,
            retries: k.api_retries,
        };
        for (name, value) in directives(prompt) {
            let v = value.as_deref();
            let num = || v.and_then(|s| s.parse::<u64>().ok());
            match name.as_str() {
                "crash" => cfg.crash = Some(v.and_then(CrashMode::parse).unwrap_or(k.crash_mode)),
                "hang" => {
                    cfg.hang = Some(v.and_then(Hang::parse).unwrap_or(Hang::BeforeResult));
                }
                "delay" => cfg.delay = num().map_or(cfg.delay, Duration::from_millis),
                "turns" => {
                    cfg.turns = num()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(cfg.turns)
                }
                "stderr" => cfg.stderr_bytes = num().unwrap_or(cfg.stderr_bytes),
                "big" => cfg.big = num().unwrap_or(cfg.big),
                "result" => cfg.result = v.and_then(ResultKind::parse).unwrap_or(cfg.result),
                "retries" => {
                    cfg.retries = num()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(cfg.retries)
                }
                _ => {}
            }
        }
        cfg
    }
}

/// How a task ended.
struct Outcome {
    is_error: bool,
    /// `hang=after_result`: the process must never exit on its own afterwards.
    never_exit: bool,
}

/// The session a process serves (one-shot: a single task; stream-json: many).
struct Session {
    knobs: Knobs,
    format: Format,
    session_id: String,
    cwd: String,
    model: String,
    tools: Vec<String>,
    permission_mode: String,
    api_key_source: &'static str,
    max_turns: Option<u32>,
    include_partial: bool,
    /// State dir to register the session in (unless `--no-session-persistence`).
    persist_dir: Option<PathBuf>,
    tasks_started: u64,
}

/// Writes one task's lines: applies the line delay, honours interrupts and the output format.
struct TaskWriter {
    n: u64,
    delay: Duration,
    format: Format,
}

impl TaskWriter {
    fn aborted(&self) -> bool {
        ABORT_TASK.load(Ordering::SeqCst) == self.n
    }

    /// Sleeps the line delay in small slices; true if the task was interrupted.
    fn wait(&self) -> bool {
        let deadline = Instant::now() + self.delay;
        loop {
            if self.aborted() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }

    /// Emits an event line (stream-json output only). Returns false if the task was interrupted.
    fn event(&self, j: &J) -> bool {
        if self.wait() {
            return false;
        }
        if self.format == Format::StreamJson {
            emit(j);
        }
        true
    }
}

/// Token counts of the fake: they grow with the number of API calls.
#[derive(Clone, Copy, Default)]
struct Usage {
    input: u32,
    output: u32,
    cache_read: u32,
}

fn usage(calls: u32, prompt_len: usize) -> Usage {
    let prompt_tokens = u32::try_from(prompt_len / 4).unwrap_or(u32::MAX);
    Usage {
        input: (10 * calls).saturating_add(prompt_tokens),
        output: 5 * calls,
        cache_read: 1200 * calls,
    }
}

impl Usage {
    /// The API's `usage` object.
    fn to_j(self) -> J {
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
    fn init_line(&self) -> J {
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

    fn assistant_line(&self, model: &str, content: J, stop_reason: &str, usage: J) -> J {
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

    fn partial_line(&self, text: &str) -> J {
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

    /// A `result` line. `result_text` is `Ok(text)` for `subtype:"success"` and `Err(errors)`
    /// for the `error_*` subtypes (which carry `errors` and no `result`).
    #[allow(clippy::too_many_arguments)]
    fn result_line(
        &self,
        subtype: &str,
        is_error: bool,
        started: Instant,
        num_turns: u32,
        result_text: Result<&str, Vec<String>>,
        stop_reason: Option<&str>,
        terminal_reason: &str,
        usage: Usage,
        cost: f64,
    ) -> J {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut fields: Vec<(&'static str, J)> = vec![
            ("type", "result".into()),
            ("subtype", subtype.into()),
            ("is_error", is_error.into()),
        ];
        match result_text {
            Ok(text) => {
                fields.push(("api_error_status", null()));
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
        if cost > 0.0 {
            model_usage.insert(
                self.model.clone(),
                serde_json::json!({
                    "inputTokens": usage.input,
                    "outputTokens": usage.output,
                    "cacheReadInputTokens": usage.cache_read,
                    "cacheCreationInputTokens": 0,
                    "webSearchRequests": 0,
                    "costUSD": cost,
                    "contextWindow": 200_000,
                    "maxOutputTokens": 32_000,
                }),
            );
        }
        let model_usage = J::Raw(Value::Object(model_usage));
        fields.extend([
            ("stop_reason", stop_reason.into()),
            ("session_id", self.session_id.as_str().into()),
            // JavaScript prints a zero cost as `0`, not `0.0`.
            (
                "total_cost_usd",
                if cost > 0.0 { cost.into() } else { 0u32.into() },
            ),
            ("usage", usage.to_j()),
            ("modelUsage", model_usage),
            ("permission_denials", arr![]),
            ("terminal_reason", terminal_reason.into()),
            ("fast_mode_state", "off".into()),
            ("uuid", new_uuid().into()),
        ]);
        J::Obj(fields)
    }

    /// Simulated crash (no `result`). `next` is the line that would have come next; the
    /// `partial-line` mode prints its first half without a newline.
    fn crash(&self, n: u64, mode: CrashMode, next: &J) -> ! {
        record(obj! {"event": "crash", "n": n, "mode": mode.name(), "pid": pid()});
        match mode {
            CrashMode::Exit1 => exit_now(1),
            CrashMode::Sigkill => {
                let me = libc::pid_t::try_from(pid()).unwrap_or(0);
                // SAFETY: kill() on our own pid with a valid signal number; no memory involved.
                unsafe {
                    libc::kill(me, libc::SIGKILL);
                }
                hang_forever()
            }
            CrashMode::Abort => {
                // No core file in the test's cwd: the SIGABRT death is what matters.
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: setrlimit() reads the valid, initialised struct we pass by pointer.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                }
                std::process::abort()
            }
            CrashMode::PartialLine => {
                if !STDOUT_BROKEN.load(Ordering::SeqCst) {
                    let line = to_line(next);
                    let half = &line.as_bytes()[..line.len() / 2];
                    let _guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(half).and_then(|()| out.flush());
                }
                exit_now(1)
            }
        }
    }

    /// Runs one task and prints its events according to the output format.
    fn run_task(&mut self, prompt: &str, replay: Option<J>) -> Outcome {
        self.tasks_started += 1;
        let n = self.tasks_started;
        CURRENT_TASK.store(n, Ordering::SeqCst);
        record(obj! {"event": "task_start", "n": n, "prompt": prompt});
        let outcome = self.task_body(n, prompt, replay);
        CURRENT_TASK.store(0, Ordering::SeqCst);
        outcome
    }

    fn task_body(&mut self, n: u64, prompt: &str, replay: Option<J>) -> Outcome {
        let started = Instant::now();
        let cfg = TaskCfg::new(&self.knobs, prompt);
        if cfg.hang == Some(Hang::Forever) || cfg.hang == Some(Hang::Startup) {
            hang_forever();
        }
        if self.knobs.crash_after.is_some_and(|after| n == after + 1) {
            self.crash(n, self.knobs.crash_mode, &self.init_line());
        }
        if let Some(dir) = self.persist_dir.take() {
            if let Some(path) = session_path(&dir, &self.session_id) {
                let _ = fs::create_dir_all(&dir);
                let _ = fs::write(path, &self.cwd);
            }
        }

        let w = TaskWriter {
            n,
            delay: cfg.delay,
            format: self.format,
        };
        let final_text = format!("done: {prompt}");
        let mut calls: u32 = 0;
        let mut crash_pending = cfg.crash;
        let mut retries_pending = true;

        // Everything before the result line; `Err(())` = interrupted.
        let body = (|| -> Result<(), ()> {
            let ok = |b: bool| if b { Ok(()) } else { Err(()) };
            if let Some(r) = &replay {
                ok(w.event(r))?;
            }
            ok(w.event(&self.init_line()))?;
            if cfg.stderr_bytes > 0 {
                stderr_noise(cfg.stderr_bytes);
            }
            let mut retries = |w: &TaskWriter| -> Result<(), ()> {
                if std::mem::take(&mut retries_pending) {
                    for attempt in 1..=cfg.retries {
                        let delay = (500u64 << (attempt - 1).min(6)).min(32_000);
                        ok(w.event(&obj! {
                            "type": "system",
                            "subtype": "api_retry",
                            "attempt": attempt,
                            "max_retries": 10,
                            "retry_delay_ms": delay,
                            "error_status": 529,
                            "error": "overloaded",
                            "session_id": self.session_id.as_str(),
                            "uuid": new_uuid(),
                        }))?;
                    }
                }
                Ok(())
            };

            if cfg.result == ResultKind::ApiError {
                retries(&w)?;
                let line = obj! {
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
                        "content": arr![obj! {"type": "text", "text": NOT_LOGGED_IN}],
                    },
                    "parent_tool_use_id": null(),
                    "session_id": self.session_id.as_str(),
                    "uuid": new_uuid(),
                    "error": "authentication_failed",
                };
                ok(w.event(&line))?;
                calls = 1;
                if let Some(mode) = crash_pending.take() {
                    self.crash(n, mode, &self.init_line());
                }
                return Ok(());
            }

            // Tool round trips actually printed: `--max-turns` cuts them short.
            let rounds = self.max_turns.map_or(cfg.turns, |cap| cfg.turns.min(cap));
            for i in 1..=rounds {
                retries(&w)?;
                let tool_id = api_id("toolu");
                let tool_use = obj! {
                    "type": "tool_use",
                    "id": tool_id.as_str(),
                    "name": "Bash",
                    "input": obj! {"command": "true", "description": format!("fake step {i}")},
                };
                calls += 1;
                ok(w.event(&self.assistant_line(
                    &self.model,
                    arr![tool_use],
                    "tool_use",
                    usage(1, 0).to_j(),
                )))?;
                let content = if i == 1 && cfg.big > 0 {
                    "x".repeat(usize::try_from(cfg.big).unwrap_or(usize::MAX))
                } else {
                    String::new()
                };
                let tool_result = obj! {
                    "type": "user",
                    "message": obj! {
                        "role": "user",
                        "content": arr![obj! {
                            "type": "tool_result",
                            "tool_use_id": tool_id.as_str(),
                            "content": content,
                            "is_error": false,
                        }],
                    },
                    "parent_tool_use_id": null(),
                    "session_id": self.session_id.as_str(),
                    "uuid": new_uuid(),
                };
                if let Some(mode) = crash_pending.take() {
                    self.crash(n, mode, &tool_result);
                }
                ok(w.event(&tool_result))?;
            }
            let capped = self.max_turns.is_some_and(|cap| cfg.turns + 1 > cap);
            if cfg.result == ResultKind::Success && !capped {
                retries(&w)?;
                if self.include_partial {
                    ok(w.event(&self.partial_line(&final_text)))?;
                }
                calls += 1;
                let line = self.assistant_line(
                    &self.model,
                    arr![obj! {"type": "text", "text": final_text.as_str()}],
                    "end_turn",
                    usage(1, prompt.len()).to_j(),
                );
                ok(w.event(&line))?;
                if let Some(mode) = crash_pending.take() {
                    self.crash(n, mode, &self.init_line());
                }
            }
            Ok(())
        })();

        let cost = f64::from(calls.max(1) * 12) / 10_000.0;
        let (result, is_error, subtype) = if body.is_err() {
            let line = self.result_line(
                "error_during_execution",
                true,
                started,
                calls,
                Err(vec!["Interrupted by user".to_owned()]),
                None,
                "aborted_streaming",
                usage(calls, prompt.len()),
                cost,
            );
            (line, true, "error_during_execution")
        } else {
            let capped_at = match (cfg.result, self.max_turns) {
                (_, Some(cap)) if cfg.turns + 1 > cap => Some(cap),
                (ResultKind::MaxTurns, cap) => Some(cap.unwrap_or(cfg.turns).min(cfg.turns)),
                _ => None,
            };
            match (cfg.result, capped_at) {
                (ResultKind::ApiError, _) => (
                    self.result_line(
                        "success",
                        true,
                        started,
                        1,
                        Ok(NOT_LOGGED_IN),
                        Some("stop_sequence"),
                        "completed",
                        Usage::default(),
                        0.0,
                    ),
                    true,
                    "success",
                ),
                (_, Some(cap)) => (
                    self.result_line(
                        "error_max_turns",
                        true,
                        started,
                        cap + 1,
                        Err(vec![format!("Reached maximum number of turns ({cap})")]),
                        Some("tool_use"),
                        "max_turns",
                        usage(calls, prompt.len()),
                        cost,
                    ),
                    true,
                    "error_max_turns",
                ),
                (ResultKind::DuringExecution, None) => (
                    self.result_line(
                        "error_during_execution",
                        true,
                        started,
                        calls,
                        Err(vec![
                            "fake-claude: simulated error during execution".to_owned()
                        ]),
                        None,
                        "model_error",
                        usage(calls, prompt.len()),
                        cost,
                    ),
                    true,
                    "error_during_execution",
                ),
                _ => (
                    self.result_line(
                        "success",
                        false,
                        started,
                        calls,
                        Ok(&final_text),
                        Some("end_turn"),
                        "completed",
                        usage(calls, prompt.len()),
                        cost,
                    ),
                    false,
                    "success",
                ),
            }
        };

        if body.is_ok() {
            if cfg.hang == Some(Hang::BeforeResult) {
                hang_forever();
            }
            // The result line gets the line delay too (an interrupt here is too late to matter).
            let _ = w.wait();
        }
        match self.format {
            Format::StreamJson | Format::Json => emit(&result),
            Format::Text => {
                let text = match &result {
                    J::Obj(fields) => text_of_result(fields),
                    _ => String::new(),
                };
                emit_str(&text);
            }
        }
        record(obj! {"event": "result", "n": n, "is_error": is_error, "subtype": subtype});
        Outcome {
            is_error,
            never_exit: cfg.hang == Some(Hang::AfterResult),
        }
    }
}

/// What `--output-format text` prints for a result: the `result` text, or `Error: <errors>`.
fn text_of_result(fields: &[(&'static str, J)]) -> String {
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

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn model_name(requested: Option<&str>) -> String {
    match requested {
        None | Some("" | "default" | "sonnet") => DEFAULT_MODEL.to_owned(),
        Some("opus") => "claude-opus-4-8".to_owned(),
        Some("haiku") => "claude-haiku-4-5".to_owned(),
        Some(other) => other.to_owned(),
    }
}

/// Checks `--mcp-config` values: JSON strings are accepted, paths must exist.
fn check_mcp_configs(configs: &[String], cwd: &str) {
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
            if !state_dir
                .as_deref()
                .is_some_and(|d| session_resumable(d, id, &cwd))
            {
                fail(&format!("No conversation found with session ID: {id}"));
            }
            Some(id.clone())
        }
        // `--resume` without an id and `--continue`: the latest session of this cwd, if any.
        Some(None) => state_dir.as_deref().and_then(|d| latest_session(d, &cwd)),
        None if cli.continue_ => state_dir.as_deref().and_then(|d| latest_session(d, &cwd)),
        None => None,
    };
    let session_id = match resume_id {
        Some(id) if !cli.fork => id,
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
        knobs,
    };

    if cli.stream_input {
        run_stream(session, cli.replay_user)
    } else {
        run_oneshot(&mut session, cli.prompt.as_deref().unwrap_or(""))
    }
}

/// One-shot (text input) mode.
fn run_oneshot(session: &mut Session, arg: &str) -> ! {
    let input = if io::stdin().is_terminal() {
        String::new()
    } else {
        read_oneshot_stdin(session.knobs.stdin_wait)
    };
    let input = input.trim_end();
    let prompt = match (arg.trim().is_empty(), input.trim().is_empty()) {
        (false, false) => format!("{arg}\n{input}"),
        (false, true) => arg.to_owned(),
        (true, false) => input.to_owned(),
        (true, true) => fail(
            "Error: Input must be provided either through stdin or as a prompt argument when using --print",
        ),
    };
    let outcome = session.run_task(&prompt, None);
    if outcome.never_exit {
        hang_forever();
    }
    exit_now(final_code(&session.knobs, outcome.is_error))
}

/// Exit status at a normal end: forced by `FAKE_CLAUDE_EXIT_CODE`, 0 when stdout broke (as the
/// real CLI does), else 1 iff the last result was an error.
fn final_code(knobs: &Knobs, last_is_error: bool) -> i32 {
    knobs
        .exit_code
        .unwrap_or(if STDOUT_BROKEN.load(Ordering::SeqCst) || !last_is_error {
            0
        } else {
            1
        })
}

/// `--input-format stream-json` mode: a reader thread feeds a queue, this thread runs tasks.
fn run_stream(mut session: Session, replay: bool) -> ! {
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
        last_is_error = outcome.is_error;
        never_exit |= outcome.never_exit;
    }
    if never_exit {
        hang_forever();
    }
    exit_now(final_code(&session.knobs, last_is_error))
}
