//! The NATS transport, on the blocking `nats` crate (0.26).
//!
//! The crate's defaults are wrong for us in three measured ways: the first
//! connect sleeps a random 0–1 s, every connect parses the system CA store
//! (about 6 ms), and a request pays the 5 ms its flusher waits between
//! flushes (about 10 ms per request/reply, against 0.3 ms for a publish and
//! an explicit flush on both sides).
//! Here the first attempt has no delay, plain `nats://` URLs skip the CA
//! store, and every publish whose latency matters is followed by an explicit
//! flush — on a thread of its own with a bounded wait, because the crate's
//! `flush_timeout` ignores its timeout once the connection drops.

// The blocking `nats` crate is deprecated upstream in favour of async-nats;
// the design fixes it (no async runtime), and it stays behind this layer.
#![allow(deprecated)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender};

use crate::config::url::redact_url;
use crate::config::NatsAuth;
use crate::message::router::Sub;
use crate::message::schemas::LinkState;
use crate::transport::health_check::{spawn_probe, NatsState};
use crate::transport::hub::{NatsOut, NatsRx};
use crate::transport::jetstream::{self, JsBoot};
use crate::transport::nats_subs as subs;
use crate::transport::{Handler, Incoming, Transport, TransportError, TransportKind};

/// How to reach and log in to NATS. Secrets in `auth` never reach a log
/// line, even through `{:?}`; nor do credentials inside the URL, which is
/// only ever shown through [`NatsSettings::shown_url`].
#[derive(Clone, Default)]
pub struct NatsSettings {
    pub url: String,
    pub auth: NatsAuth,
}

impl NatsSettings {
    /// The URL without its credentials, for logs, errors and `health`.
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &self.shown_url())
            .field("auth", &self.auth)
            .finish()
    }
}

/// `nats::Options` for `s`. `daemon` connections reconnect forever.
fn options(s: &NatsSettings, daemon: bool) -> nats::Options {
    let a = &s.auth;
    let mut o = if let Some(c) = &a.creds {
        nats::Options::with_credentials(c)
    } else if let Some(t) = &a.token {
        nats::Options::with_token(t.expose())
    } else if let Some(u) = &a.user {
        nats::Options::with_user_pass(u, a.password.as_ref().map_or("", |p| p.expose()))
    } else {
        nats::Options::new()
    };
    o = o.with_name(if daemon {
        "mister-smith daemon"
    } else {
        "mister-smith"
    });
    // No sleep before the first attempt (the crate's default adds 0-1 s of
    // jitter even then); short, growing delays after, capped at 250 ms so a
    // restarted server is found again within a quarter second.
    o = o.reconnect_delay_callback(|n| {
        if n == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(25u64.saturating_mul(1 << n.min(6)).min(250))
        }
    });
    if let Some(ca) = &a.tls_ca {
        o = o.add_root_certificate(ca);
    } else if s.url.starts_with("nats://") && a.tls_cert.is_none() {
        // Loading the system CA store costs ~6 ms per connect and a plain
        // nats:// connection needs none: give the crate an empty list
        // instead (it reads native certificates only when the list is
        // empty).
        o = o.add_root_certificate("/dev/null");
    }
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        o = o.client_cert(cert, key);
    }
    if s.url.starts_with("tls://") || a.tls_ca.is_some() || a.tls_cert.is_some() {
        o = o.tls_required(true);
    }
    if daemon {
        o = o
            .max_reconnects(None)
            .no_echo()
            .reconnect_buffer_size(8 * 1024 * 1024);
    } else {
        o = o.max_reconnects(Some(1));
    }
    o
}

/// How a client command reconnects after losing NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reconnect {
    /// One attempt: answers in flight are gone anyway.
    Once,
    /// Until the command's own bound ends it: a durable task's answer is
    /// kept, and can be read once back.
    UntilBound,
}

/// Checks that every file the settings name can be read, so that a
/// missing one is named (the crate's own error does not say which file).
pub(crate) fn check_files(s: &NatsSettings) -> Result<(), TransportError> {
    let a = &s.auth;
    let files = [
        ("credentials file", &a.creds),
        ("CA certificate", &a.tls_ca),
        ("client certificate", &a.tls_cert),
        ("client key", &a.tls_key),
    ];
    for (what, path) in files {
        if let Some(path) = path {
            if let Err(source) = std::fs::File::open(path) {
                return Err(TransportError::NatsFile {
                    what,
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A failed connect, by what the user must fix. The crate reports every
/// connect failure as an `io::Error` whose kind and text are the only clue
/// (the server's `-ERR 'Authorization Violation'` arrives as "unexpected
/// line while connecting"), so they are read here, once, where the error
/// arises, and nowhere else.
fn connect_error(s: &NatsSettings, source: std::io::Error) -> TransportError {
    let url = s.shown_url();
    // The crate's words for a peer that hung up mid-handshake.
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        return TransportError::NatsConnect {
            url,
            source: std::io::Error::new(
                source.kind(),
                "the server closed the connection before it introduced itself (not a NATS server, or one refusing connections)",
            ),
        };
    }
    let text = source.to_string().to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if source.kind() == std::io::ErrorKind::PermissionDenied
        || has(&[
            "authorization",
            "authentication",
            "credentials",
            "nkey",
            "jwt",
        ])
    {
        TransportError::NatsAuth { url, source }
    } else if has(&["tls", "certificate", "certs", "key"]) {
        TransportError::NatsTls { url, source }
    } else if s.auth.creds.is_some() && source.kind() == std::io::ErrorKind::NotFound {
        // A credentials file that is not there.
        TransportError::NatsAuth { url, source }
    } else if (s.auth.tls_ca.is_some() || s.auth.tls_cert.is_some())
        && source.kind() == std::io::ErrorKind::NotFound
    {
        TransportError::NatsTls { url, source }
    } else {
        TransportError::NatsConnect { url, source }
    }
}

/// How many messages may wait for the NATS publishers.
pub(crate) const OUT_QUEUE: usize = 65_536;

/// Connects the daemon (retrying in the background until NATS answers),
/// subscribes, and starts the receive and publish threads; the publishers
/// take what arrives on `out_rx`.
pub(crate) fn start_daemon(
    settings: NatsSettings,
    subs: (Vec<Sub>, Receiver<Vec<Sub>>),
    inbound: Handler,
    state: Arc<NatsState>,
    out_rx: NatsRx,
    max_message_size: usize,
    durable: Option<JsBoot>,
) -> Result<(), TransportError> {
    check_files(&settings)?;
    state.set(LinkState::Reconnecting);
    thread::Builder::new()
        .name("nats".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            daemon_connect(
                &settings,
                &subs,
                &inbound,
                &state,
                out_rx,
                max_message_size,
                durable,
            )
        })
        .map_err(TransportError::Io)?;
    Ok(())
}

fn daemon_connect(
    settings: &NatsSettings,
    (subs, changes): &(Vec<Sub>, Receiver<Vec<Sub>>),
    inbound: &Handler,
    state: &Arc<NatsState>,
    out_rx: NatsRx,
    max_message_size: usize,
    durable: Option<JsBoot>,
) {
    let mut delay = Duration::from_millis(50);
    // The crate closes each failed attempt too: only a connection that was
    // made and then closed is worth an error.
    let made = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut refused_said = String::new();
    let conn = loop {
        let (s1, s2, s3) = (state.clone(), state.clone(), state.clone());
        let made_once = made.clone();
        let opts = options(settings, true)
            .disconnect_callback(move || {
                s1.set(LinkState::Reconnecting);
                log::warn!("NATS disconnected; reconnecting");
            })
            .reconnect_callback(move || {
                s2.reconnected();
                log::info!("NATS reconnected");
            })
            .close_callback(move || {
                if made_once.load(std::sync::atomic::Ordering::Relaxed) {
                    s3.set(LinkState::Closed);
                    log::error!("NATS connection closed");
                }
            });
        match opts.connect(settings.url.as_str()) {
            Ok(c) => {
                made.store(true, std::sync::atomic::Ordering::Relaxed);
                break c;
            }
            Err(e) => {
                match connect_error(settings, e) {
                    e @ (TransportError::NatsAuth { .. } | TransportError::NatsTls { .. }) => {
                        // Said once (and again if it changes), not every 5 s.
                        state.set(LinkState::Refused);
                        delay = Duration::from_secs(5);
                        let text = e.to_string();
                        if text != refused_said {
                            log::error!("{text}; the daemon keeps trying every 5 s");
                            refused_said = text;
                        }
                    }
                    TransportError::NatsConnect { url, source } => {
                        state.set(LinkState::Reconnecting);
                        log::warn!(
                            "NATS at {url} not reachable ({source}); retrying in {} ms",
                            delay.as_millis()
                        );
                    }
                    e => {
                        state.set(LinkState::Reconnecting);
                        log::warn!("{e}; retrying in {} ms", delay.as_millis());
                    }
                }
                // A bounded, deliberate wait: there is no readiness signal
                // for a server that is not there yet.
                thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    // A reload while we were connecting has the last word.
    let wanted = changes.try_iter().last().unwrap_or_else(|| subs.clone());
    let mut subscriptions = Vec::new();
    subs::subscribe(&conn, &wanted, &mut subscriptions);
    if let Err(e) = conn.flush_timeout(Duration::from_secs(5)) {
        log::warn!("NATS: subscriptions not confirmed: {e}");
    }
    let max_payload = conn.max_payload();
    state.set_max_payload(max_payload);
    if max_payload < max_message_size {
        log::warn!(
            "NATS server takes messages of at most {max_payload} bytes, less than message.max_message_size ({max_message_size}): results are cut to fit"
        );
    }
    state.set(LinkState::Connected);
    log::info!(
        "NATS connected to {} ({} subscriptions)",
        settings.shown_url(),
        subscriptions.len()
    );
    spawn_probe(conn.clone(), state.clone());
    if let Some(b) = durable {
        jetstream::boot(&conn, b);
    }

    let turn = Arc::new(Mutex::new(out_rx));
    for n in 0..PUBLISHERS {
        let (conn, turn, state) = (conn.clone(), turn.clone(), state.clone());
        let spawned = thread::Builder::new()
            .name("nats-out".into())
            .stack_size(128 * 1024)
            .spawn(move || publisher(&conn, &turn, &state));
        if let Err(e) = spawned {
            log::error!("NATS: cannot start publisher {n}: {e}");
        }
    }
    subs::receive_loop(&conn, subscriptions, changes, inbound);
}

/// How many publishers take turns. A flush writes what is buffered at
/// once but then waits a round trip for its PONG; while one publisher
/// waits, the other takes the next burst. (With one flusher, a task's
/// result waited behind the PONG of its own acknowledgement's flush:
/// 70–140 µs of a 0.38 ms round trip.)
const PUBLISHERS: usize = 2;

/// One publisher: holding the turn, it takes a burst of messages and
/// publishes them in order; then it gives up the turn and flushes. The
/// crate's own flusher waits up to 5 ms between flushes, and its flush
/// can block far past any timeout on a dead connection, so it is only
/// asked while connected, and never while holding the turn.
fn publisher(conn: &nats::Connection, turn: &Mutex<NatsRx>, state: &NatsState) {
    loop {
        // Barriers are let go once the flush after them is done.
        let mut barriers = Vec::new();
        {
            let rx = turn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(first) = rx.recv() else { return };
            let mut next = Some(first);
            while let Some(out) = next {
                match out {
                    NatsOut::Publish(subject, data) => {
                        // The server closes a connection that exceeds its
                        // max_payload; never send such a message.
                        if data.len() > conn.max_payload() {
                            log::warn!(
                                "NATS: not publishing {} bytes on {subject} (server max_payload {})",
                                data.len(),
                                conn.max_payload()
                            );
                        } else if let Err(e) = conn.publish(&subject, &**data) {
                            log::warn!("NATS: publish to {subject} failed: {e}");
                        }
                    }
                    NatsOut::Message(m) => {
                        if m.data.len() > conn.max_payload() {
                            log::warn!(
                                "NATS: not publishing {} bytes on {} (server max_payload {})",
                                m.data.len(),
                                m.subject,
                                conn.max_payload()
                            );
                        } else if let Err(e) = conn.publish_with_reply_or_headers(
                            &m.subject,
                            m.reply.as_deref(),
                            header_map(&m.headers).as_ref(),
                            &**m.data,
                        ) {
                            log::warn!("NATS: publish to {} failed: {e}", m.subject);
                        }
                    }
                    NatsOut::Barrier(done) => barriers.push(done),
                }
                next = rx.try_recv();
            }
        }
        if state.get() == LinkState::Connected {
            if let Err(e) = conn.flush_timeout(Duration::from_secs(2)) {
                log::debug!("NATS: flush: {e}");
            }
        }
        drop(barriers);
    }
}

/// `pairs` as the crate's headers (`None` for none).
fn header_map(pairs: &[(&'static str, String)]) -> Option<nats::HeaderMap> {
    if pairs.is_empty() {
        return None;
    }
    let mut h = nats::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.clone());
    }
    Some(h)
}

/// How long a command waits for NATS to accept its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the flusher answers a flush request.
type FlushDone = Sender<std::io::Result<()>>;

/// The CLI's NATS connection. Messages are read straight from the crate's
/// subscription queues; connecting and flushing run on one helper thread,
/// started before the handshake (each thread a command starts costs about
/// 0.1 ms of a `send`).
pub(crate) struct NatsClient {
    url: String,
    conn: nats::Connection,
    /// Cleared by the crate's disconnect callback.
    connected: Arc<AtomicBool>,
    /// Asks the flusher thread for a flush; it answers on the sender.
    flusher: Sender<FlushDone>,
    /// Says the connection was lost: answers may be gone with it.
    lost: Receiver<()>,
    inbox: String,
    subs: Vec<nats::Subscription>,
}

impl NatsClient {
    pub(crate) fn connect(
        settings: &NatsSettings,
        reconnect: Reconnect,
    ) -> Result<NatsClient, TransportError> {
        check_files(settings)?;
        let (lost_tx, lost) = crossbeam_channel::bounded(1);
        let connected = Arc::new(AtomicBool::new(true));
        let (down, up) = (connected.clone(), connected.clone());
        let mut opts = options(settings, false)
            .disconnect_callback(move || {
                down.store(false, Ordering::SeqCst);
                let _ = lost_tx.try_send(());
            })
            .reconnect_callback(move || up.store(true, Ordering::SeqCst));
        if reconnect == Reconnect::UntilBound {
            opts = opts.max_reconnects(None);
        }
        // The crate's connect has no timeout anywhere (it reads the
        // server's INFO and waits for the first PONG without a bound), and
        // its flush waits for a PONG without a bound once the connection
        // drops. Both run on this helper thread; we wait for each with a
        // bound.
        let (conn_tx, conn_rx) = crossbeam_channel::bounded(1);
        let (flush_tx, flush_rx) = crossbeam_channel::bounded::<FlushDone>(1);
        let url = settings.url.clone();
        thread::Builder::new()
            .name("nats-client".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let conn = match opts.connect(url.as_str()) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = conn_tx.send(Err(e));
                        return;
                    }
                };
                if conn_tx.send(Ok(conn.clone())).is_err() {
                    return;
                }
                for done in flush_rx {
                    let _ = done.send(conn.flush());
                }
            })
            .map_err(TransportError::Io)?;
        let conn = match conn_rx.recv_timeout(CONNECT_TIMEOUT) {
            Ok(r) => r.map_err(|e| connect_error(settings, e))?,
            Err(_) => {
                return Err(TransportError::NatsConnect {
                    url: settings.shown_url(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} ms", CONNECT_TIMEOUT.as_millis()),
                    ),
                })
            }
        };
        Ok(NatsClient {
            url: settings.shown_url(),
            conn,
            connected,
            flusher: flush_tx,
            lost,
            inbox: format!("_INBOX.{}", uuid::Uuid::new_v4().simple()),
            subs: Vec::new(),
        })
    }

    /// Publishes `data` with a `Nats-Msg-Id` header: a JetStream stream
    /// that captures `subject` stores one message per id.
    pub(crate) fn publish_with_id(
        &self,
        subject: &str,
        reply: &str,
        msg_id: &str,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let mut h = nats::HeaderMap::new();
        h.insert(nats::header::NATS_MSG_ID, msg_id.to_string());
        self.conn
            .publish_with_reply_or_headers(subject, Some(reply), Some(&h), data)
            .map_err(TransportError::Nats)
    }

    /// The connection, for JetStream's API requests.
    pub(crate) fn conn(&self) -> &nats::Connection {
        &self.conn
    }

    /// Whether the connection is up now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// A message already waiting in a subscription's queue.
    fn ready(&self) -> Option<Incoming> {
        self.subs
            .iter()
            .find_map(|s| s.receiver().try_recv().ok())
            .map(incoming)
    }
}

fn incoming(msg: nats::Message) -> Incoming {
    let no_responders = msg.is_no_responders();
    Incoming {
        subject: msg.subject,
        data: msg.data,
        no_responders,
        lost: false,
    }
}

impl Transport for NatsClient {
    fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let r = match reply {
            Some(r) => self.conn.publish_request(subject, r, data),
            None => self.conn.publish(subject, data),
        };
        r.map_err(TransportError::Nats)
    }

    fn subscribe(&mut self, pattern: &str) -> Result<(), TransportError> {
        let sub = self.conn.subscribe(pattern).map_err(TransportError::Nats)?;
        // The crate queues without a bound by default: a taker that cannot
        // keep up (`listen` into a slow pipe) loses messages, not memory.
        sub.set_message_limits(65_536);
        self.subs.push(sub);
        Ok(())
    }

    fn flush(&self, timeout: Duration) -> Result<(), TransportError> {
        // The crate's flush waits for its PONG without a bound once the
        // connection drops (and `close` flushes first): it runs on the
        // flusher thread, and this wait is bounded.
        if !self.connected.load(Ordering::SeqCst) {
            return Err(TransportError::Nats(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected",
            )));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let stuck = || TransportError::FlushTimeout(timeout.as_millis());
        self.flusher
            .send_timeout(tx, timeout)
            .map_err(|_| stuck())?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TransportError::Nats(e)),
            Err(_) => Err(stuck()),
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Incoming, RecvTimeoutError> {
        // What arrived before a loss is still delivered first.
        if let Some(m) = self.ready() {
            return Ok(m);
        }
        let mut sel = Select::new();
        for s in &self.subs {
            sel.recv(s.receiver());
        }
        let lost = sel.recv(&self.lost);
        let op = match deadline {
            Some(d) => sel
                .select_deadline(d)
                .map_err(|_| RecvTimeoutError::Timeout)?,
            None => sel.select(),
        };
        let i = op.index();
        if i == lost {
            return match op.recv(&self.lost) {
                Ok(()) => Ok(Incoming {
                    subject: String::new(),
                    data: Vec::new(),
                    no_responders: false,
                    lost: true,
                }),
                Err(_) => Err(RecvTimeoutError::Disconnected),
            };
        }
        op.recv(self.subs[i].receiver())
            .map(incoming)
            .map_err(|_| RecvTimeoutError::Disconnected)
    }

    fn inbox(&self) -> &str {
        &self.inbox
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Nats
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.conn.max_payload())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn as_nats(&self) -> Option<&NatsClient> {
        Some(self)
    }
}
