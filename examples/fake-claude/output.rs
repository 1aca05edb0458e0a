//! What leaves the process: stdout lines (one `write` each, silenced after EPIPE), the record
//! file (`FAKE_CLAUDE_RECORD`), usage errors on stderr, and every voluntary exit with its status.

use std::env;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::json::{obj, to_line, J};
use crate::knobs::{env_str, Knobs};

/// Serialises stdout lines (control responses come from the stdin thread, events from the worker)
/// and lets an exiting thread wait until no line is half written.
pub(crate) static OUT: Mutex<()> = Mutex::new(());
/// Set once a stdout write failed (EPIPE): output stops, the process carries on.
pub(crate) static STDOUT_BROKEN: AtomicBool = AtomicBool::new(false);
/// The record file, when `FAKE_CLAUDE_RECORD` is set.
static RECORDER: OnceLock<Mutex<File>> = OnceLock::new();

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// Appends one JSON line to the record file (one `write` on an `O_APPEND` file).
pub(crate) fn record(j: J) {
    if let Some(file) = RECORDER.get() {
        let mut line = to_line(&j);
        line.push('\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
    }
}

/// Writes one stdout line with a single `write_all` of line + `\n`, then flushes.
/// After the first failure (EPIPE: the reader went away) nothing more is written.
pub(crate) fn emit_str(line: &str) {
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

pub(crate) fn emit(j: &J) {
    emit_str(&to_line(j));
}

/// Voluntary exit: records it, waits briefly so no stdout line is cut in half, then exits.
pub(crate) fn exit_now(code: i32) -> ! {
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
pub(crate) fn fail(msg: &str) -> ! {
    let _ = writeln!(io::stderr().lock(), "{msg}");
    exit_now(1)
}

/// Stops doing anything but stays alive (signals are still handled on their thread).
pub(crate) fn hang_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Closes stdout (the supervisor sees end of file) and stays alive: a
/// fault no sound agent has, for the daemon's tests.
pub(crate) fn close_stdout_and_hang() -> ! {
    let _guard = OUT.lock().unwrap_or_else(|e| e.into_inner());
    let _ = io::stdout().flush();
    // SAFETY: closing fd 1 has no memory-safety preconditions; nothing
    // writes to it afterwards (the lock is held until the process ends).
    unsafe {
        libc::close(1);
    }
    hang_forever()
}

/// Opens the record file (`FAKE_CLAUDE_RECORD`); a failure is reported and recording is off.
pub(crate) fn open_recorder(path: &str) {
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

/// The first record line: who we are, how we were started, and the env the supervisor gave us.
pub(crate) fn record_start(argv: &[String], exe: &str, cwd: &str) {
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

/// Exit status at a normal end: forced by `FAKE_CLAUDE_EXIT_CODE`, 0 when stdout broke (as the
/// real CLI does), else 1 iff the last result was an error.
pub(crate) fn final_code(knobs: &Knobs, last_is_error: bool) -> i32 {
    knobs
        .exit_code
        .unwrap_or(if STDOUT_BROKEN.load(Ordering::SeqCst) || !last_is_error {
            0
        } else {
            1
        })
}
