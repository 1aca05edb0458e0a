//! The `nats-server` the bench starts for the rows that go over NATS, and
//! what their raw clients share: a connect without delays and a task
//! envelope.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::daemon::dies_with_bench;
use crate::scratch::Scratch;

pub(crate) struct Nats {
    child: Child,
    pub(crate) url: String,
}

impl Nats {
    pub(crate) fn start(work: &Scratch) -> Nats {
        Nats::spawn(work, false)
    }

    /// A server with JetStream on, storing under the scratch directory.
    pub(crate) fn start_js(work: &Scratch) -> Nats {
        Nats::spawn(work, true)
    }

    fn spawn(work: &Scratch, js: bool) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut cmd = Command::new("nats-server");
        if js {
            cmd.arg("-js").arg("-sd").arg(work.sub("jetstream"));
        }
        let mut child = dies_with_bench(&mut cmd)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server (install it: apt-get install nats-server)");
        let err = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(err);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("Server is ready") {
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || for _ in reader.lines() {});
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Nats {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn fast_connect(url: &str) -> nats::Connection {
    nats::Options::new()
        .reconnect_delay_callback(|_| Duration::ZERO)
        .add_root_certificate("/dev/null")
        .connect(url)
        .expect("connect to NATS")
}

/// A task envelope as a third-party client would publish it, with a
/// message id (for JetStream's `Nats-Msg-Id`).
pub(crate) fn task_envelope_with_id(prompt: &str) -> (String, Vec<u8>) {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&serde_json::json!({
        "message_id": id,
        "message_type": "task_assignment",
        "payload": {"task_id": prompt, "prompt": prompt},
    }))
    .expect("json");
    (id, body)
}

pub(crate) fn task_envelope(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "message_type": "task_assignment",
        "payload": {"task_id": prompt, "prompt": prompt},
    }))
    .expect("json")
}
