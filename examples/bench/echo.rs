//! The floors' other side: a raw NATS echo responder, a minimal relay that
//! carries each task through a fake-claude agent, and that agent on pipes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::bins::Bins;
use crate::daemon::dies_with_bench;
use crate::nats_server::fast_connect;

/// A raw NATS responder on its own connection, the floor's other side: it
/// answers every request on `subject` with the request's body (or `reply`)
/// and flushes, as a well-behaved responder does.
pub(crate) struct Echo {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Echo {
    pub(crate) fn start(url: &str, subject: &str, reply: Option<&'static [u8]>) -> Echo {
        let responder = fast_connect(url);
        let sub = responder.subscribe(subject).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                if let Ok(m) = sub.next_timeout(Duration::from_millis(100)) {
                    if let Some(r) = &m.reply {
                        let _ = responder.publish(r, reply.unwrap_or(&m.data));
                        let _ = responder.flush();
                    }
                }
            }
        });
        Echo { stop, thread }
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// The floor with an agent in it: a minimal relay on its own connection
/// that hands each request's prompt to a fake-claude echo over its pipes,
/// reads up to the result line, and replies with that line, flushing. What
/// any supervisor must at least do to carry a task to a `claude` and back;
/// the daemon does more (an acknowledgement, progress events, status
/// changes, a watchdog, the queue), and that difference is its overhead.
pub(crate) struct Relay {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Relay {
    pub(crate) fn start(bins: &Bins, url: &str, subject: &str) -> Relay {
        let responder = fast_connect(url);
        let sub = responder.subscribe(subject).expect("subscribe");
        responder.flush().expect("flush");
        let mut child = fake_echo(bins);
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut line = String::new();
            while !s2.load(Ordering::Relaxed) {
                let Ok(m) = sub.next_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let task: serde_json::Value = serde_json::from_slice(&m.data).unwrap_or_default();
                let prompt = task["payload"]["prompt"].as_str().unwrap_or_default();
                let mut user = serde_json::to_vec(&serde_json::json!({
                    "type": "user",
                    "message": {"role": "user", "content": prompt},
                }))
                .expect("json");
                user.push(b'\n');
                stdin.write_all(&user).expect("write to the agent");
                loop {
                    line.clear();
                    if out.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.contains("\"type\":\"result\"") {
                        break;
                    }
                }
                if let Some(r) = &m.reply {
                    let _ = responder.publish(r, line.trim_end());
                    let _ = responder.flush();
                }
            }
            drop(stdin);
            let _ = child.wait();
        });
        Relay { stop, thread }
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// A fake-claude echo (no delay) in stream-json mode, on pipes.
pub(crate) fn fake_echo(bins: &Bins) -> Child {
    dies_with_bench(&mut Command::new(&bins.fake))
        .args([
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose",
        ])
        .env("FAKE_CLAUDE_TURNS", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fake-claude")
}
