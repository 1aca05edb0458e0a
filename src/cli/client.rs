//! What the client commands share: connecting by the contract's rules,
//! request/reply over either transport, and answers turned into exit codes.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::cli::{bound, Cli};
use crate::config::{Config, MessageConfig};
use crate::error::{exit, SystemError};
use crate::message::envelope::{Envelope, Payload};
use crate::message::schemas::Severity;
use crate::transport::local_transport::LocalClient;
use crate::transport::nats_transport::{NatsClient, Reconnect};
use crate::transport::{Incoming, Transport, TransportError, TransportKind};

/// How long to wait for a daemon to acknowledge a request.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(5);

/// Over NATS several daemons may answer one request: after an answer, how
/// long to wait for another before taking the ones in hand as all of them.
pub(super) const MORE_ANSWERS: Duration = Duration::from_millis(150);

/// What a command's hard bound allows beyond its own wait, for connecting.
pub(super) const CONNECT_MARGIN: Duration = Duration::from_secs(5);

/// Bounds a command that waits at most `within` for answers: past that and
/// a margin for connecting, it ends with exit 75 (retry later).
pub(super) fn bound_command(within: Duration) {
    bound_total(within + CONNECT_MARGIN);
}

/// Ends the command with exit 75 and one line once `limit` has passed.
pub(super) fn bound_total(limit: Duration) {
    bound::arm(
        limit,
        bound::Stream::Stderr,
        &format!(
            "mister-smith: error: gave up after {} ms without an answer",
            limit.as_millis()
        ),
        exit::TEMPORARY,
    );
}

pub(super) struct Client {
    pub transport: Box<dyn Transport>,
    pub config: Option<Config>,
    next: u64,
    subscribed: bool,
}

/// Whether a command may use the local socket when NATS cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failover {
    /// Yes, saying so on stderr: the local daemon answers for itself.
    ToSocket,
    /// No: what the command does needs NATS (a durable task is stored in
    /// the stream, not handed to one daemon).
    Never,
}

/// Connects: an explicit `--socket` means the local socket; otherwise NATS
/// when a URL is known; otherwise the local socket. NATS that cannot be
/// reached (refused, or silent past the bound; not refused credentials)
/// with a daemon on the local socket: the socket, and one line on stderr.
pub(super) fn connect(cli: &Cli) -> Result<Client, SystemError> {
    connect_with(cli, Failover::ToSocket)
}

/// [`connect`], saying whether the socket may stand in for NATS.
pub(super) fn connect_with(cli: &Cli, failover: Failover) -> Result<Client, SystemError> {
    let config = cli.client_config()?;
    let transport: Box<dyn Transport> = match (&cli.socket, cli.nats_settings(config.as_ref())?) {
        (None, Some(settings)) => {
            // A durable task's answer is kept: a command waiting for one
            // reconnects for as long as its bound lets it.
            let reconnect = match config.as_ref().and_then(|c| c.transport.jetstream.as_ref()) {
                Some(_) => Reconnect::UntilBound,
                None => Reconnect::Once,
            };
            match NatsClient::connect(&settings, reconnect) {
                Ok(nats) => Box::new(nats),
                Err(e @ TransportError::NatsConnect { .. }) if failover == Failover::ToSocket => {
                    let path = cli.socket_path(config.as_ref());
                    let Ok(local) = LocalClient::connect(&path) else {
                        return Err(e.into());
                    };
                    crate::cli::notice(&format!(
                        "{e}; using the local daemon on {} (this host only)",
                        path.display()
                    ));
                    Box::new(local)
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => Box::new(LocalClient::connect(&cli.socket_path(config.as_ref()))?),
    };
    Ok(Client {
        transport,
        config,
        next: 0,
        subscribed: false,
    })
}

impl Client {
    /// The message limits: the config's, else the defaults.
    pub(super) fn limits(&self) -> MessageConfig {
        self.config
            .as_ref()
            .map(|c| c.message.clone())
            .unwrap_or_default()
    }

    /// A fresh reply subject under this client's inbox.
    pub(super) fn reply_subject(&mut self) -> Result<String, SystemError> {
        if !self.subscribed {
            let pattern = format!("{}.>", self.transport.inbox());
            self.transport.subscribe(&pattern)?;
            self.subscribed = true;
        }
        self.next += 1;
        Ok(format!("{}.{}", self.transport.inbox(), self.next))
    }

    /// Publishes `env` on `subject` with a fresh reply subject (also set as
    /// the envelope's `reply_to`), and returns that subject.
    pub(super) fn request(
        &mut self,
        subject: &str,
        env: &mut Envelope,
    ) -> Result<String, SystemError> {
        let reply = self.reply_subject()?;
        env.reply_to = Some(reply.clone());
        let bytes = self.encode_checked(env)?;
        self.transport.publish(subject, Some(&reply), &bytes)?;
        Ok(reply)
    }

    /// `env` encoded, refused when it is larger than the config or the
    /// server allows.
    pub(super) fn encode_checked(&self, env: &Envelope) -> Result<Vec<u8>, SystemError> {
        let bytes = env.encode();
        let configured = self.limits().max_message_size;
        if bytes.len() > configured {
            return Err(SystemError::BadInput(format!(
                "message is {} bytes, more than max_message_size ({configured})",
                bytes.len()
            )));
        }
        if let Some(max) = self.transport.max_payload().filter(|&m| bytes.len() > m) {
            return Err(SystemError::BadInput(format!(
                "message is {} bytes, more than the NATS server takes ({max})",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Confirms that what was published reached the server or daemon,
    /// waiting at most `within` (and never more than `ACK_WAIT`).
    pub(super) fn flush_within(&self, within: Duration) -> Result<(), SystemError> {
        self.transport
            .flush(within.clamp(Duration::from_millis(1), ACK_WAIT))?;
        Ok(())
    }

    /// Confirms that what was published reached the server or daemon.
    pub(super) fn flush(&self) -> Result<(), SystemError> {
        self.transport.flush(ACK_WAIT)?;
        Ok(())
    }

    /// The next message, or `None` at `deadline`.
    pub(super) fn next_until(&self, deadline: Instant) -> Result<Option<Incoming>, SystemError> {
        match self.transport.recv(Some(deadline)) {
            Ok(m) if m.lost => Err(SystemError::ConnectionLost {
                peer: self.describe(),
            }),
            Ok(m) => Ok(Some(m)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Err(SystemError::Transport(TransportError::Closed))
            }
        }
    }

    /// Sends one request and collects answers: all that arrive until
    /// `deadline`, or until `quiet` passes without one after the first.
    pub(super) fn ask(
        &mut self,
        subject: &str,
        env: &mut Envelope,
        deadline: Instant,
        quiet: Option<Duration>,
    ) -> Result<Vec<Envelope>, SystemError> {
        self.request(subject, env)?;
        // The caller's wait bounds the confirmation too: a frozen daemon
        // must not hold `health --timeout 200` for the full ACK_WAIT.
        let left = deadline.saturating_duration_since(Instant::now());
        self.transport
            .flush(left.clamp(Duration::from_millis(1), ACK_WAIT))?;
        let mut out = Vec::new();
        let mut until = deadline;
        while let Some(m) = self.next_until(until)? {
            if m.no_responders {
                if out.is_empty() {
                    return Err(SystemError::NoResponders {
                        subject: subject.to_string(),
                    });
                }
                continue;
            }
            out.push(decode(&m)?);
            match quiet {
                Some(q) => until = (Instant::now() + q).min(deadline),
                None => break,
            }
        }
        Ok(out)
    }

    pub(super) fn describe(&self) -> String {
        self.transport.describe()
    }

    /// Whether this is NATS, where several daemons may answer one request.
    pub(super) fn kind(&self) -> TransportKind {
        self.transport.kind()
    }
}

/// Decodes an answer; a daemon never sends one we cannot read, so this is
/// lenient about size.
pub(super) fn decode(m: &Incoming) -> Result<Envelope, SystemError> {
    Envelope::decode(&m.data, usize::MAX).map_err(|why| SystemError::UnreadableAnswer {
        subject: m.subject.clone(),
        why,
    })
}

/// An answer that is a refusal, as an error.
pub(super) fn refusal(env: &Envelope) -> Option<SystemError> {
    match &env.payload {
        Payload::SystemAlert(a) if a.severity != Severity::Info => Some(SystemError::Refused {
            code: a.code.clone(),
            message: a.message.clone(),
        }),
        _ => None,
    }
}

/// Writes one line to stdout (a closed pipe ends the command quietly).
pub(super) fn print_line(out: &mut impl Write, line: &[u8]) -> Result<(), SystemError> {
    out.write_all(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|source| SystemError::Io {
            what: "write to stdout",
            source,
        })
}

/// Writes `text` to stdout and flushes it.
pub(super) fn write_stdout(text: &[u8]) -> Result<(), SystemError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text)
        .and_then(|()| out.flush())
        .map_err(|source| SystemError::Io {
            what: "write to stdout",
            source,
        })
}
