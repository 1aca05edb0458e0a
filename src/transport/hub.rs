//! The hub: the daemon's one way out.
//!
//! Everything the daemon publishes — progress, results, status changes,
//! alerts, replies — goes out through an [`Outbox`]: to the NATS publisher
//! directly, and, while local clients are connected, to the hub, which
//! delivers it to every local subscription whose pattern matches. A slow
//! local listener gets its messages dropped (and counted) rather than
//! stalling the daemon.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::message::envelope::Envelope;
use crate::transport::subject_matches;

/// Reply subjects of local clients start with this; they are never sent to
/// NATS.
pub(crate) const LOCAL_INBOX_PREFIX: &str = "_INBOX.local.";

/// Requests to the hub.
#[derive(Debug)]
pub(crate) enum HubCmd {
    Publish {
        subject: String,
        data: Arc<Vec<u8>>,
    },
    Subscribe {
        conn: u64,
        sid: u64,
        pattern: String,
        out: Arc<ClientOut>,
    },
    Unsubscribe {
        conn: u64,
        sid: u64,
    },
    Closed {
        conn: u64,
    },
    /// Every copy of this sender is dropped once everything sent before it
    /// has been written to local clients and flushed to NATS.
    Barrier(Sender<()>),
}

/// What a local client's writer thread is given.
#[derive(Debug)]
pub(crate) enum WriterMsg {
    /// One line to write.
    Frame(Vec<u8>),
    /// Dropped once everything before it is written.
    Flush(Sender<()>),
}

/// The most a local client may have waiting to be written to it before it
/// is cut off as a slow consumer (nats-server does the same to a NATS
/// client): a suspended `listen`, or a client that never reads, must not
/// grow the daemon without bound.
pub(crate) const MAX_CLIENT_BYTES: usize = 16 * 1024 * 1024;

/// A local client's outgoing queue, shared by the hub and the client's
/// reader (its replies). The writer thread holds only the [`ClientLine`]:
/// once the reader has ended and the hub has forgotten the client, the
/// last sender is gone and the writer ends too.
#[derive(Debug)]
pub(crate) struct ClientOut {
    tx: Sender<WriterMsg>,
    line: Arc<ClientLine>,
}

/// What the writer and the queue share: the socket and the bytes waiting.
#[derive(Debug)]
pub(crate) struct ClientLine {
    conn: u64,
    /// Bytes queued and not yet written.
    bytes: AtomicUsize,
    /// The client's socket: shut down to cut a slow consumer off, which
    /// also frees a writer blocked on it.
    stream: Arc<std::os::unix::net::UnixStream>,
    cut: std::sync::atomic::AtomicBool,
}

impl ClientOut {
    pub(crate) fn new(
        conn: u64,
        tx: Sender<WriterMsg>,
        stream: Arc<std::os::unix::net::UnixStream>,
    ) -> ClientOut {
        ClientOut {
            tx,
            line: Arc::new(ClientLine {
                conn,
                bytes: AtomicUsize::new(0),
                stream,
                cut: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The writer's half.
    pub(crate) fn line(&self) -> Arc<ClientLine> {
        self.line.clone()
    }

    /// Queues `frame` for the client; a client that has more than
    /// [`MAX_CLIENT_BYTES`] waiting (or a full queue) is cut off instead.
    pub(crate) fn send(&self, frame: Vec<u8>) {
        let line = &self.line;
        if line.cut.load(Ordering::Relaxed) {
            return;
        }
        let len = frame.len();
        let waiting = line.bytes.fetch_add(len, Ordering::SeqCst) + len;
        let queued =
            waiting <= MAX_CLIENT_BYTES && self.tx.try_send(WriterMsg::Frame(frame)).is_ok();
        if !queued {
            line.bytes.fetch_sub(len, Ordering::SeqCst);
            line.cut_off(&format!("{waiting} bytes waiting"));
        }
    }

    /// Queues a flush marker (dropped once what is before it is written).
    pub(crate) fn flush_marker(&self, done: Sender<()>) {
        let _ = self.tx.send(WriterMsg::Flush(done));
    }

    /// Frames waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.tx.len()
    }
}

impl ClientLine {
    /// The writer wrote a frame of `len` bytes.
    pub(crate) fn written(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::SeqCst);
    }

    /// The client's socket.
    pub(crate) fn stream(&self) -> &std::os::unix::net::UnixStream {
        &self.stream
    }

    /// Disconnects a client that does not keep up.
    pub(crate) fn cut_off(&self, why: &str) {
        if !self.cut.swap(true, Ordering::SeqCst) {
            log::warn!(
                "local client {} reads too slowly ({why}): disconnected",
                self.conn
            );
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// What the hub hands the NATS publisher.
#[derive(Debug)]
pub(crate) enum NatsOut {
    Publish(String, Arc<Vec<u8>>),
    /// A message with a reply subject and headers (JetStream's requests,
    /// acknowledgements and stored results).
    Message(Box<RawMessage>),
    /// Dropped once everything before it is flushed to the server.
    Barrier(Sender<()>),
}

/// A message for NATS only, with what plain publishes lack.
#[derive(Debug)]
pub(crate) struct RawMessage {
    pub subject: String,
    pub reply: Option<String>,
    /// Header names and values (none: a plain message).
    pub headers: Vec<(&'static str, String)>,
    pub data: Arc<Vec<u8>>,
}

/// The NATS publishers' queue: unbounded underneath, so its memory grows
/// with use rather than with its limit (a bounded channel of 65,536 slots
/// costs 3 MB of RSS up front), and capped by a count.
pub(crate) fn nats_queue(limit: usize) -> (NatsTx, NatsRx) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        NatsTx {
            tx,
            queued: queued.clone(),
            limit,
        },
        NatsRx { rx, queued },
    )
}

/// The sending end of [`nats_queue`].
#[derive(Clone, Debug)]
pub(crate) struct NatsTx {
    tx: Sender<NatsOut>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl NatsTx {
    /// Queues a message; false when the queue is full (or closed).
    fn try_send(&self, out: NatsOut) -> bool {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// The receiving end of [`nats_queue`].
#[derive(Debug)]
pub(crate) struct NatsRx {
    rx: Receiver<NatsOut>,
    queued: Arc<AtomicUsize>,
}

impl NatsRx {
    /// The next message, waiting for one; `None` once every sender is gone.
    pub(crate) fn recv(&self) -> Option<NatsOut> {
        let out = self.rx.recv().ok()?;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        Some(out)
    }

    /// The next message if one is waiting.
    pub(crate) fn try_recv(&self) -> Option<NatsOut> {
        let out = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        Some(out)
    }
}

/// A cheap, cloneable handle for publishing. NATS-bound messages go
/// straight to the NATS publisher; the hub sees them only while a local
/// client is connected. Each hand-off between threads is a wake-up, and a
/// wake-up of an idle vCPU costs tens of microseconds here.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    hub: Sender<HubCmd>,
    nats: Option<NatsTx>,
    /// Local clients connected now (counted before a client can subscribe).
    locals: Arc<AtomicUsize>,
    nats_dropped: Arc<AtomicU64>,
}

impl Outbox {
    pub(crate) fn new(
        hub: Sender<HubCmd>,
        nats: Option<NatsTx>,
        locals: Arc<AtomicUsize>,
    ) -> Outbox {
        Outbox {
            hub,
            nats,
            locals,
            nats_dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    fn send(&self, subject: &str, data: Arc<Vec<u8>>) {
        let to_nats = self
            .nats
            .as_ref()
            .filter(|_| !subject.starts_with(LOCAL_INBOX_PREFIX));
        if self.locals.load(Ordering::SeqCst) > 0 {
            let _ = self.hub.send(HubCmd::Publish {
                subject: subject.to_string(),
                data: data.clone(),
            });
        }
        if let Some(n) = to_nats {
            // Never block the daemon on NATS: a publisher that is that far
            // behind loses messages, counted in the log.
            if !n.try_send(NatsOut::Publish(subject.to_string(), data)) {
                let dropped = self.nats_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    log::warn!("NATS publisher is behind: {dropped} messages not published");
                }
            }
        }
    }

    /// Sends `m` to NATS alone; false when it could not be queued.
    pub(crate) fn send_raw(&self, m: RawMessage) -> bool {
        let Some(n) = &self.nats else { return false };
        let queued = n.try_send(NatsOut::Message(Box::new(m)));
        if !queued {
            let dropped = self.nats_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                log::warn!("NATS publisher is behind: {dropped} messages not published");
            }
        }
        queued
    }

    /// Drops `done` once everything queued for NATS before it has been
    /// flushed to the server (at once without NATS).
    pub(crate) fn nats_barrier(&self, done: Sender<()>) {
        if let Some(n) = &self.nats {
            let _ = n.tx.send(NatsOut::Barrier(done));
        }
    }

    /// Publishes `env` on `subject`.
    pub(crate) fn publish(&self, subject: &str, env: &Envelope) {
        self.send(subject, Arc::new(env.encode()));
    }

    /// Publishes an envelope already encoded on `subject` and, when given,
    /// on `reply_to`.
    pub(crate) fn publish_encoded_and_reply(
        &self,
        subject: &str,
        reply_to: Option<&str>,
        data: Vec<u8>,
    ) {
        self.publish_shared(subject, reply_to, Arc::new(data));
    }

    /// [`Outbox::publish_encoded_and_reply`], with bytes shared with
    /// another reader (a transcript).
    pub(crate) fn publish_shared(&self, subject: &str, reply_to: Option<&str>, data: Arc<Vec<u8>>) {
        self.send(subject, data.clone());
        if let Some(r) = reply_to {
            self.send(r, data);
        }
    }

    /// Sends `env` to `reply_to` only.
    pub(crate) fn reply(&self, reply_to: &str, env: &Envelope) {
        self.publish(reply_to, env);
    }

    /// Waits (at most `within`) until everything published so far has left.
    pub(crate) fn drain(&self, within: std::time::Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        if self.hub.send(HubCmd::Barrier(tx.clone())).is_err() {
            return false;
        }
        if let Some(n) = &self.nats {
            if n.tx.send(NatsOut::Barrier(tx)).is_err() {
                return false;
            }
        } else {
            drop(tx);
        }
        // Every holder of the barrier drops its copy when done.
        matches!(
            rx.recv_timeout(within),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    }
}

struct Sub {
    sid: u64,
    pattern: String,
    out: Arc<ClientOut>,
}

/// The hub's loop; returns when every sender is gone.
pub(crate) fn run(inbox: &Receiver<HubCmd>) {
    let mut subs: HashMap<u64, Vec<Sub>> = HashMap::new();
    for cmd in inbox {
        match cmd {
            HubCmd::Publish { subject, data } => {
                for list in subs.values() {
                    for s in list
                        .iter()
                        .filter(|s| subject_matches(&s.pattern, &subject))
                    {
                        s.out.send(frame(s.sid, &subject, &data));
                    }
                }
            }
            HubCmd::Subscribe {
                conn,
                sid,
                pattern,
                out,
            } => subs
                .entry(conn)
                .or_default()
                .push(Sub { sid, pattern, out }),
            HubCmd::Unsubscribe { conn, sid } => {
                if let Some(list) = subs.get_mut(&conn) {
                    list.retain(|s| s.sid != sid);
                }
            }
            HubCmd::Closed { conn } => {
                subs.remove(&conn);
            }
            HubCmd::Barrier(done) => {
                for list in subs.values() {
                    if let Some(s) = list.first() {
                        s.out.flush_marker(done.clone());
                    }
                }
            }
        }
    }
}

/// A `msg` frame of the local protocol: one JSON line.
pub(crate) fn frame(sid: u64, subject: &str, envelope: &[u8]) -> Vec<u8> {
    let subject = serde_json::Value::String(subject.to_string()).to_string();
    let mut out = Vec::with_capacity(envelope.len() + subject.len() + 48);
    out.extend_from_slice(
        format!("{{\"op\":\"msg\",\"sid\":{sid},\"subject\":{subject},\"envelope\":").as_bytes(),
    );
    out.extend_from_slice(envelope);
    out.extend_from_slice(b"}\n");
    out
}
