//! The local transport: a Unix socket (mode 0600) on which the daemon acts
//! as a small broker for one host.
//!
//! The protocol is NDJSON, one frame per line, with NATS's shape:
//!
//! ```text
//! client -> daemon  {"op":"pub","subject":S,"reply":R|null,"envelope":{...}}
//!                   {"op":"sub","sid":N,"subject":PATTERN}
//!                   {"op":"unsub","sid":N}
//!                   {"op":"ping"}
//! daemon -> client  {"op":"msg","sid":N,"subject":S,"envelope":{...}}
//!                   {"op":"pong"}
//!                   {"op":"err","message":"..."}
//! ```
//!
//! Only the daemon's own user (and root) may connect: the socket is created
//! with mode 0600 and every peer's credentials are checked as well.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::sys;
use crate::transport::hub::{ClientOut, HubCmd, WriterMsg, LOCAL_INBOX_PREFIX};
use crate::transport::lines::{read_lines, Flow, LineRead};
use crate::transport::{Handler, Incoming, Transport, TransportError, TransportKind};

/// At most this many local clients at once (each costs two threads).
const MAX_CONNECTIONS: usize = 256;
/// Messages waiting for a slow local client before it is cut off (its
/// bytes are bounded too: `hub::MAX_CLIENT_BYTES`).
const CLIENT_QUEUE: usize = 65_536;
/// How long a local client may send nothing and listen to nothing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write to a local client may wait for it to read.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Above this many waiting answers, the daemon stops reading the client's
/// requests until it has read its answers: a client that sends faster than
/// it reads slows itself down instead of losing answers.
const HIGH_WATER: usize = 8_192;

/// One frame, either way. A flat struct rather than an enum tagged by
/// `op`: serde buffers tagged enums, which a borrowed `RawValue` (the
/// envelope, passed on without re-encoding) cannot survive.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct Frame<'a> {
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    envelope: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// For programs: why an `err` frame was sent (`too_many_clients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

/// The `code` of the `err` frame a daemon with no free connection slot
/// sends before it closes the connection.
const TOO_MANY_CLIENTS: &str = "too_many_clients";

impl Frame<'_> {
    fn err(message: String, code: Option<&str>) -> Frame<'static> {
        Frame {
            op: "err".into(),
            message: Some(message),
            code: code.map(String::from),
            ..Frame::default()
        }
    }
}

/// The default socket path: `$XDG_RUNTIME_DIR/mister-smith.sock`, else
/// `mister-smith-<uid>.sock` in the system temp directory.
pub(crate) fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("mister-smith.sock"),
        _ => std::env::temp_dir().join(format!("mister-smith-{}.sock", sys::uid())),
    }
}

/// The daemon's listening socket; removes its file when dropped.
pub(crate) struct LocalServer {
    path: PathBuf,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (mode 0600) and serves clients on background threads;
/// `live` counts the clients connected (the [`Outbox`] feeds the hub only
/// while there are some).
///
/// [`Outbox`]: crate::transport::hub::Outbox
pub(crate) fn serve(
    path: &Path,
    hub: Sender<HubCmd>,
    inbound: Handler,
    max_frame: usize,
    live: Arc<AtomicUsize>,
) -> Result<LocalServer, TransportError> {
    let listen_err = |source| TransportError::LocalListen {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(listen_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        // A live daemon answers; a stale socket from a killed one does not.
        if UnixStream::connect(path).is_ok() {
            return Err(TransportError::LocalInUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(listen_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            )));
        }
    }
    let listener = sys::bind_private(path).map_err(listen_err)?;
    let server = LocalServer {
        path: path.to_path_buf(),
    };
    // An fd held in reserve: when the daemon runs out of fds (agents
    // spawning in a crash loop, a low RLIMIT_NOFILE), giving it up lets a
    // `status` or `health` in to say so. A daemon that cannot even hold it
    // could never answer: better not to start.
    let spare = std::fs::File::open("/dev/null").map_err(listen_err)?;
    thread::Builder::new()
        .name("local-accept".into())
        .stack_size(128 * 1024)
        .spawn(move || accept_loop(&listener, spare, &hub, &inbound, max_frame, &live))
        .map_err(listen_err)?;
    Ok(server)
}

fn accept_loop(
    listener: &UnixListener,
    spare: std::fs::File,
    hub: &Sender<HubCmd>,
    inbound: &Handler,
    max_frame: usize,
    live: &Arc<AtomicUsize>,
) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(10);
    let mut spare = Some(spare);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    continue;
                }
                if spare.take().is_some() {
                    log::warn!(
                        "out of file descriptors: using the reserved one to accept a local client"
                    );
                    continue;
                }
                // The connection stays in the backlog and accept fails again
                // at once. Nothing signals that an fd came free, so wait a
                // little, longer each time, instead of spinning.
                log::warn!(
                    "cannot accept a local connection: {e}; retrying in {} ms",
                    backoff.as_millis()
                );
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if spare.is_none() {
            spare = std::fs::File::open("/dev/null").ok();
        }
        match sys::peer_uid(&stream) {
            Some(uid) if uid == sys::uid() || uid == 0 => {}
            other => {
                log::warn!("refused a local connection from uid {other:?}");
                continue;
            }
        }
        if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let mut s = &stream;
            let refusal = Frame::err(
                format!("the daemon serves at most {MAX_CONNECTIONS} local clients at once; retry later"),
                Some(TOO_MANY_CLIENTS),
            );
            let _ = s.write_all(&frame_line(&refusal));
            continue;
        }
        let conn = NEXT.fetch_add(1, Ordering::Relaxed);
        let (hub, inbound, live) = (hub.clone(), inbound.clone(), live.clone());
        // Counted before the client can subscribe, so that nothing
        // published after its subscription bypasses the hub.
        live.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name(format!("local:{conn}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                serve_client(conn, stream, &hub, &inbound, max_frame);
                let _ = hub.send(HubCmd::Closed { conn });
                live.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            log::error!("cannot start a thread for local client {conn}");
        }
    }
}

fn serve_client(
    conn: u64,
    stream: UnixStream,
    hub: &Sender<HubCmd>,
    inbound: &Handler,
    max_frame: usize,
) {
    // One fd for both directions (the writer thread shares the stream
    // rather than a dup of it): a daemon short of fds still serves clients.
    let stream = Arc::new(stream);
    let (tx, rx) = crossbeam_channel::bounded::<WriterMsg>(CLIENT_QUEUE);
    let out = Arc::new(ClientOut::new(conn, tx, stream.clone()));
    let (drained_tx, drained_rx) = crossbeam_channel::bounded::<()>(1);
    // A write the client does not take within this long cuts it off, as
    // nats-server's write deadline does: a writer never hangs for good on a
    // client that stopped reading.
    let _ = stream.set_write_timeout(Some(WRITE_DEADLINE));
    let line = out.line();
    let writer = thread::Builder::new()
        .name(format!("local-w:{conn}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut w: &UnixStream = line.stream();
            // Ends when every sender is gone: the reader has ended and the
            // hub has forgotten the client.
            for msg in &rx {
                match msg {
                    WriterMsg::Frame(frame) => {
                        let wrote = w.write_all(&frame);
                        line.written(frame.len());
                        if let Err(e) = wrote {
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) {
                                line.cut_off(&format!(
                                    "nothing taken for {} s",
                                    WRITE_DEADLINE.as_secs()
                                ));
                            }
                            break;
                        }
                    }
                    WriterMsg::Flush(done) => drop(done),
                }
                if rx.len() < HIGH_WATER / 2 {
                    let _ = drained_tx.try_send(());
                }
            }
            let _ = w.shutdown(std::net::Shutdown::Both);
        });
    if writer.is_err() {
        return;
    }
    let err = |message: String| out.send(frame_line(&Frame::err(message, None)));
    // A client that sends nothing and listens to nothing for this long is
    // closed: idle connections must not hold the slots of working ones.
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let subscribed = std::cell::Cell::new(false);
    let active = std::cell::Cell::new(false);
    let _ = read_lines(
        &*stream,
        max_frame,
        &mut |read, buf| {
            active.set(true);
            // Backpressure: let the client catch up on its answers first.
            while out.waiting() >= HIGH_WATER {
                if drained_rx.recv_timeout(Duration::from_secs(1)).is_err() && out.waiting() == 0 {
                    break;
                }
            }
            if let LineRead::TooLong(n) = read {
                err(format!(
                    "frame of {n} bytes is larger than the limit of {max_frame}"
                ));
                return Flow::Continue;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                return Flow::Continue;
            }
            let frame = match serde_json::from_slice::<Frame>(buf) {
                Ok(f) => f,
                Err(e) => {
                    err(format!("bad frame: {e}"));
                    return Flow::Continue;
                }
            };
            match (frame.op.as_str(), frame.sid, frame.subject, frame.envelope) {
                ("pub", _, Some(subject), Some(envelope)) => {
                    inbound(&subject, frame.reply.as_deref(), envelope.get().as_bytes());
                }
                ("sub", Some(sid), Some(pattern), _) => {
                    subscribed.set(true);
                    let _ = hub.send(HubCmd::Subscribe {
                        conn,
                        sid,
                        pattern,
                        out: out.clone(),
                    });
                }
                ("unsub", Some(sid), _, _) => {
                    let _ = hub.send(HubCmd::Unsubscribe { conn, sid });
                }
                ("ping", _, _, _) => {
                    // Behind every Subscribe this connection sent the hub, so
                    // a pong means earlier subscriptions are in place.
                    out.send(b"{\"op\":\"pong\"}\n".to_vec());
                }
                (op, ..) => err(format!("bad frame: op {op:?} without the fields it needs")),
            }
            Flow::Continue
        },
        &mut || {
            if subscribed.get() || active.replace(false) {
                Flow::Continue
            } else {
                log::debug!(
                    "local client {conn}: idle for {} s: closed",
                    IDLE_TIMEOUT.as_secs()
                );
                Flow::Break(())
            }
        },
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = hub.send(HubCmd::Closed { conn });
}

/// One frame as a line.
fn frame_line(f: &Frame<'_>) -> Vec<u8> {
    let mut line = serde_json::to_vec(f).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The client end.
pub(crate) struct LocalClient {
    path: PathBuf,
    writer: Mutex<UnixStream>,
    incoming: Receiver<Incoming>,
    /// Bytes received and not yet taken by `recv`.
    inflow: Arc<Inflow>,
    pongs: Receiver<()>,
    /// Set when the daemon refused the connection (no free slot).
    refused: Arc<OnceLock<String>>,
    inbox: String,
    next_sid: u64,
}

/// The most a client holds of messages it has not taken yet: a reader that
/// cannot keep up (`listen` into a slow pipe) then leaves the rest in the
/// socket, where the daemon's own bound applies.
const CLIENT_INFLOW_BYTES: usize = 16 * 1024 * 1024;

/// A byte budget between the client's reader thread and its taker.
#[derive(Default)]
struct Inflow {
    bytes: Mutex<usize>,
    room: Condvar,
}

impl Inflow {
    /// Waits until `len` more bytes fit (a single larger message always
    /// fits once nothing else is held).
    fn reserve(&self, len: usize) {
        let mut held = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        while *held > 0 && *held + len > CLIENT_INFLOW_BYTES {
            held = self.room.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        *held += len;
    }

    fn release(&self, len: usize) {
        let mut held = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        *held = held.saturating_sub(len);
        self.room.notify_all();
    }
}

impl LocalClient {
    pub(crate) fn connect(path: &Path) -> Result<LocalClient, TransportError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            let path = path.to_path_buf();
            match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    TransportError::LocalDenied { path, source }
                }
                _ => TransportError::LocalConnect { path, source },
            }
        })?;
        // Prompts and results are only exchanged with a daemon of our own
        // user (or root): someone else could have put a socket there first.
        match sys::peer_uid(&stream) {
            Some(uid) if uid == sys::uid() || uid == 0 => {}
            uid => {
                return Err(TransportError::LocalForeign {
                    path: path.to_path_buf(),
                    uid,
                })
            }
        }
        let read_half = stream.try_clone().map_err(TransportError::Io)?;
        let (tx, incoming) = crossbeam_channel::unbounded();
        let (pong_tx, pongs) = crossbeam_channel::unbounded();
        let inflow = Arc::new(Inflow::default());
        let refused = Arc::new(OnceLock::new());
        let (budget, refusal) = (inflow.clone(), refused.clone());
        thread::Builder::new()
            .name("local-client".into())
            .spawn(move || client_reader(read_half, &tx, &pong_tx, &budget, &refusal))
            .map_err(TransportError::Io)?;
        Ok(LocalClient {
            path: path.to_path_buf(),
            writer: Mutex::new(stream),
            incoming,
            inflow,
            pongs,
            refused,
            inbox: format!("{LOCAL_INBOX_PREFIX}{}", uuid::Uuid::new_v4().simple()),
            next_sid: 0,
        })
    }

    fn write(&self, line: &[u8]) -> Result<(), TransportError> {
        let mut w = self.writer.lock().map_err(|_| TransportError::Closed)?;
        w.write_all(line).map_err(|e| {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return TransportError::Io(e);
            }
            // The daemon closed the connection: if it said why (no free
            // slot), the reader is about to know; give it a moment.
            let _ = self.pongs.recv_timeout(Duration::from_millis(200));
            match self.refused.get() {
                Some(why) => TransportError::LocalBusy {
                    path: self.path.clone(),
                    why: why.clone(),
                },
                None => TransportError::Closed,
            }
        })
    }
}

fn client_reader(
    stream: UnixStream,
    tx: &Sender<Incoming>,
    pongs: &Sender<()>,
    inflow: &Inflow,
    refused: &OnceLock<String>,
) {
    let _ = read_lines(
        stream,
        usize::MAX,
        &mut |_, buf| {
            let frame = match serde_json::from_slice::<Frame>(buf) {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("daemon sent a bad frame: {e}");
                    return Flow::Continue;
                }
            };
            match (frame.op.as_str(), frame.subject, frame.envelope) {
                ("msg", Some(subject), Some(envelope)) => {
                    let msg = Incoming {
                        subject,
                        data: envelope.get().as_bytes().to_vec(),
                        no_responders: false,
                        lost: false,
                    };
                    // Bounded: a taker that cannot keep up (stdout into a
                    // slow pipe) leaves the rest in the socket.
                    inflow.reserve(msg.data.len());
                    if tx.send(msg).is_err() {
                        return Flow::Break(());
                    }
                }
                ("pong", _, _) => {
                    let _ = pongs.send(());
                }
                ("err", _, _) if frame.code.as_deref() == Some(TOO_MANY_CLIENTS) => {
                    let _ = refused.set(frame.message.unwrap_or_default());
                    return Flow::Break(());
                }
                ("err", _, _) => log::warn!("daemon: {}", frame.message.unwrap_or_default()),
                (op, _, _) => log::warn!("daemon sent an unknown frame {op:?}"),
            }
            Flow::Continue
        },
        &mut || Flow::Continue,
    );
}

impl Transport for LocalClient {
    fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let subject_json = serde_json::Value::String(subject.to_string()).to_string();
        let reply_json = match reply {
            Some(r) => serde_json::Value::String(r.to_string()).to_string(),
            None => "null".into(),
        };
        let mut line = Vec::with_capacity(data.len() + 128);
        line.extend_from_slice(
            format!(
                "{{\"op\":\"pub\",\"subject\":{subject_json},\"reply\":{reply_json},\"envelope\":"
            )
            .as_bytes(),
        );
        line.extend_from_slice(data);
        line.extend_from_slice(b"}\n");
        self.write(&line)
    }

    fn subscribe(&mut self, pattern: &str) -> Result<(), TransportError> {
        self.next_sid += 1;
        let frame = serde_json::json!({"op": "sub", "sid": self.next_sid, "subject": pattern});
        let mut line = frame.to_string().into_bytes();
        line.push(b'\n');
        self.write(&line)
    }

    fn flush(&self, timeout: Duration) -> Result<(), TransportError> {
        let sent = self.write(b"{\"op\":\"ping\"}\n");
        let answer = match sent {
            Ok(()) => self.pongs.recv_timeout(timeout),
            Err(_) => Err(crossbeam_channel::RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(TransportError::LocalTimeout {
                    path: self.path.clone(),
                    ms: timeout.as_millis(),
                })
            }
            Err(_) => Err(match self.refused.get() {
                Some(why) => TransportError::LocalBusy {
                    path: self.path.clone(),
                    why: why.clone(),
                },
                None => sent.err().unwrap_or(TransportError::Closed),
            }),
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Incoming, RecvTimeoutError> {
        let got = match deadline {
            Some(d) => self.incoming.recv_deadline(d),
            None => self
                .incoming
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        if let Ok(m) = &got {
            self.inflow.release(m.data.len());
        }
        got
    }

    fn inbox(&self) -> &str {
        &self.inbox
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Socket
    }

    fn describe(&self) -> String {
        format!("socket {}", self.path.display())
    }
}
