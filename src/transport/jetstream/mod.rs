//! Durable tasks on JetStream, the transport's side: the streams and
//! consumers, and the daemon's pump that pulls tasks, keeps them alive while
//! they run, stores their results and acknowledges them.
//!
//! ```text
//!   send ──publish, Nats-Msg-Id──▶ tasks stream (work queue)
//!                                   │ durable pull consumers: one per agent id,
//!                                   │ one per type for `any` (one sweeps `all`)
//!                                   ▼
//!   pump ◀── deliveries ── pull requests sized by the dispatcher's demand
//!    │  hands each task to the runtime (which queues it like any other)
//!    │  +WPI every ack_wait/3 while the daemon holds it
//!    │  result ──publish, Nats-Msg-Id──▶ results stream, then live, then +ACK
//!    ▼
//!   a redelivery (delivered > 1) whose result is stored is answered from it
//! ```
//!
//! The pump never blocks: everything it sends goes through the NATS
//! publishers, and the only blocking calls (creating streams and consumers,
//! reading a stored result, a consumer's state) run on the admin thread.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::message::demand::Demand;
use crate::message::stream_view::{ConsumerView, StreamLink, StreamView};

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod pump;

/// A consumer of the tasks stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerSpec {
    /// Its durable name.
    pub name: String,
    /// The subjects it takes.
    pub filter: String,
}

impl ConsumerSpec {
    /// The consumer of agent `id`'s own tasks (under any type token).
    pub(crate) fn agent(id: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: format!("agent-{id}"),
            filter: format!("mister-smith.*.{id}.task_assignment"),
        }
    }

    /// The consumer of tasks for any agent of `agent_type`.
    pub(crate) fn any(agent_type: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: format!("any-{agent_type}"),
            filter: format!("mister-smith.{agent_type}.any.task_assignment"),
        }
    }

    /// The consumer that clears tasks for `all`: they go to every agent on
    /// core NATS, and the stream only caught them on the way.
    pub(crate) fn all() -> ConsumerSpec {
        ConsumerSpec {
            name: "all".into(),
            filter: "mister-smith.*.all.task_assignment".into(),
        }
    }
}

/// A task delivered from the stream, for the runtime to take.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// The consumer (its index in the list the pump was given).
    pub consumer: usize,
    pub subject: String,
    pub data: Vec<u8>,
    /// Its acknowledgement subject.
    pub ack: String,
    pub stream_seq: u64,
    /// 1 for the first delivery.
    pub delivered: u32,
    /// When the stream stored it, in ms since the epoch.
    pub published_ms: u64,
}

/// What the runtime did with a delivery.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Queued: it is answered later with [`JsCmd::Finish`] or given back.
    Taken,
    /// Answered at once (not run): store this result, publish it, then
    /// acknowledge (`term`: end the message rather than acknowledge it).
    Answer(Box<Finish>),
    /// Not a task: ended without an answer.
    Refuse,
}

/// A task's result, to store and then publish.
#[derive(Debug)]
pub(crate) struct Finish {
    pub ack: String,
    pub stream_seq: u64,
    pub task_id: String,
    /// The encoded `task_result` envelope.
    pub data: Arc<Vec<u8>>,
    /// Where it is published once stored (the agent's subject, the sender's
    /// reply subject).
    pub live: Vec<String>,
    /// End the message (`+TERM`) rather than acknowledge it.
    pub term: bool,
}

/// Requests to the pump.
#[derive(Debug)]
pub(crate) enum JsCmd {
    /// A task's result.
    Finish(Box<Finish>),
    /// Give a task back to the stream unanswered (the daemon is stopping),
    /// by its stream sequence.
    Release { seq: u64 },
    /// Dropped once everything before it has been sent and every result
    /// stored (or given up on).
    Flush(Sender<()>),
    /// From the admin thread: consumer `n` exists (again).
    Ready(usize),
}

/// The dispatcher's latest demand (what each consumer should deliver, and
/// what it has received from each), handed to the pump: many changes
/// between two of the pump's wake-ups cost one wake-up.
#[derive(Clone)]
pub(crate) struct DemandLink {
    latest: Arc<Mutex<Option<Demand>>>,
    wake: Sender<()>,
}

/// The pump's end of a [`DemandLink`].
pub(crate) struct DemandRx {
    latest: Arc<Mutex<Option<Demand>>>,
    pub(crate) wake: crossbeam_channel::Receiver<()>,
}

/// A link from the dispatcher to the pump.
pub(crate) fn demand_link() -> (DemandLink, DemandRx) {
    let latest = Arc::new(Mutex::new(None));
    let (wake, rx) = crossbeam_channel::bounded(1);
    (
        DemandLink {
            latest: latest.clone(),
            wake,
        },
        DemandRx { latest, wake: rx },
    )
}

impl DemandLink {
    /// The dispatcher's demand now.
    pub(crate) fn put(&self, d: Demand) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
        // Full: the pump has a wake-up pending, and reads the latest then.
        let _ = self.wake.try_send(());
    }
}

impl DemandRx {
    /// The latest demand, if it changed since the last take.
    pub(crate) fn take(&self) -> Option<Demand> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// How JetStream is doing, for `status` and `health`.
#[derive(Debug, Default)]
pub(crate) struct JsState {
    /// 0 not yet known, 1 reachable, 2 unreachable.
    link: AtomicU8,
    /// Why it is unreachable.
    error: Mutex<Option<String>>,
    /// Each consumer's name and tasks waiting in the stream for it.
    pending: Mutex<Vec<(String, u64)>>,
}

impl JsState {
    pub(crate) fn set_reachable(&self) {
        self.link.store(1, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn set_unreachable(&self, why: String) {
        self.link.store(2, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// What a report shows of durable mode on `stream`.
    pub(crate) fn view(&self, stream: &str) -> StreamView {
        let state = match self.link.load(Ordering::Relaxed) {
            1 => StreamLink::Ok,
            2 => StreamLink::Unreachable,
            _ => StreamLink::Unknown,
        };
        let error = if state == StreamLink::Unreachable {
            self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
        } else {
            None
        };
        StreamView {
            stream: stream.to_string(),
            state,
            error,
            consumers: self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(name, waiting)| ConsumerView {
                    name: name.clone(),
                    waiting: *waiting,
                })
                .collect(),
        }
    }

    pub(crate) fn set_pending(&self, name: &str, n: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = n,
            None => p.push((name.to_string(), n)),
        }
    }
}

/// How long a pull request lives on the server: a request lost with the
/// server that held it is replaced after this.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// What durable mode needs once NATS is connected.
pub(crate) struct JsBoot {
    pub pump: pump::PumpStart,
    pub state: Arc<JsState>,
    /// The admin thread's way to the pump.
    pub to_pump: Sender<JsCmd>,
}

/// Starts the admin thread and the pump on `conn`.
#[allow(deprecated)]
pub(crate) fn boot(conn: &nats::Connection, b: JsBoot) {
    let mut specs = b.pump.consumers.clone();
    specs.push(ConsumerSpec::all());
    let admin = admin::Admin {
        conn: conn.clone(),
        config: b.pump.config.clone(),
        specs,
        to_pump: b.to_pump,
        state: b.state,
    };
    let spawned = std::thread::Builder::new()
        .name("js-admin".into())
        .stack_size(256 * 1024)
        .spawn(move || admin.run());
    if let Err(e) = spawned {
        log::error!("JetStream: cannot start the admin thread: {e}; durable tasks stop");
        return;
    }
    let conn = conn.clone();
    let start = b.pump;
    let spawned = std::thread::Builder::new()
        .name("js-pump".into())
        .stack_size(256 * 1024)
        .spawn(move || pump::run(start, &conn));
    if let Err(e) = spawned {
        log::error!("JetStream: cannot start the pump: {e}; durable tasks stop");
    }
}
