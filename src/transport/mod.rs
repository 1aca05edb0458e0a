//! Transports: how envelopes move between the CLI, daemons and other
//! clients.
//!
//! Both transports speak in NATS terms — subjects, reply subjects,
//! subscriptions with `*` and `>` wildcards — so the daemon routes a message
//! the same way whichever way it came. NATS carries the multi-host case; the
//! local Unix socket makes the daemon itself a small broker for one host,
//! which also keeps `status` and `health` working while NATS is down.
//!
//! On the daemon side every outgoing message goes through the [`hub`]'s
//! `Outbox`: to the NATS publishers, and to local subscribers while any are
//! connected. Incoming messages go to one [`Handler`], whichever transport
//! they came on.
//!
//! This layer knows envelopes and subjects (`message`), never what the
//! daemon does with them (`runtime`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

pub(crate) mod error;
pub(crate) mod health_check;
pub(crate) mod hub;
pub(crate) mod jetstream;
pub(crate) mod lines;
pub(crate) mod local_transport;
mod nats_subs;
pub(crate) mod nats_transport;

pub(crate) use error::TransportError;

/// What the daemon does with a message that arrives on either transport:
/// `(subject, reply subject, data)`. It runs on the transport's receiving
/// thread and must not block.
pub(crate) type Handler = Arc<dyn Fn(&str, Option<&str>, &[u8]) + Send + Sync>;

/// Which transport a client is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportKind {
    /// A NATS server: possibly many daemons behind one subject.
    Nats,
    /// The local socket of one daemon.
    Socket,
}

/// A message delivered to a client.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub subject: String,
    pub data: Vec<u8>,
    /// NATS said nobody subscribes to the subject the request went to.
    pub no_responders: bool,
    /// Not a message: the connection was lost (answers may be gone).
    pub lost: bool,
}

/// A client's connection: publish, subscribe, and confirm delivery.
pub(crate) trait Transport: Send {
    /// Publishes `data` on `subject`, with replies going to `reply`.
    fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        data: &[u8],
    ) -> Result<(), TransportError>;
    /// Subscribes to `pattern`; messages arrive through [`Transport::recv`].
    fn subscribe(&mut self, pattern: &str) -> Result<(), TransportError>;
    /// Waits until everything published so far has reached the server (or
    /// the daemon), for at most `timeout`.
    fn flush(&self, timeout: Duration) -> Result<(), TransportError>;
    /// The next message of any subscription, waiting until `deadline`
    /// (forever with `None`).
    fn recv(&self, deadline: Option<Instant>) -> Result<Incoming, RecvTimeoutError>;
    /// A subject prefix no other client uses, for reply subjects.
    fn inbox(&self) -> &str;
    /// Which transport this is.
    fn kind(&self) -> TransportKind;
    /// The largest message the peer takes, when it says (a NATS server's
    /// `max_payload`).
    fn max_payload(&self) -> Option<usize> {
        None
    }
    /// "nats://host:4222" or "socket /run/user/0/mister-smith.sock", for
    /// messages.
    fn describe(&self) -> String;
    /// The NATS client underneath, for what only NATS does (JetStream).
    fn as_nats(&self) -> Option<&nats_transport::NatsClient> {
        None
    }
}

/// Whether `subject` matches the subscription `pattern` (`*` is one token,
/// a final `>` is one or more).
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*.c", "a.x.c"));
        assert!(!subject_matches("a.*", "a.x.c"));
        assert!(subject_matches("a.>", "a.x.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches(
            "mister-smith.*.coder-1.*",
            "mister-smith.claude.coder-1.task_result"
        ));
        assert!(!subject_matches(
            "mister-smith.*.coder-1.*",
            "mister-smith.claude.coder-2.task_result"
        ));
        assert!(subject_matches(">", "x"));
    }
}
