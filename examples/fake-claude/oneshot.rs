//! One-shot (text input) mode: the 3 s wait for the first stdin byte, the prompt built from the
//! argument and stdin, one task, then exit.

use std::io::{self, IsTerminal, Read, Write};
use std::thread;
use std::time::Duration;

use crate::json::obj;
use crate::output::{exit_now, fail, final_code, hang_forever, record};
use crate::session::Session;

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

/// One-shot (text input) mode.
pub(crate) fn run_oneshot(session: &mut Session, arg: &str) -> ! {
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
    exit_now(final_code(&session.knobs, outcome.failed))
}
