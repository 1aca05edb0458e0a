//! Errors of the transports. Each says what failed; which exit code it
//! means is decided in one place, `SystemError::exit_code`.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no daemon at {}: {source}", path.display())]
    LocalConnect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket is there but we may not use it (permissions).
    #[error("cannot use the daemon's socket {}: {source}", path.display())]
    LocalDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {}: {source}", path.display())]
    LocalListen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another daemon is already serving {}", path.display())]
    LocalInUse { path: PathBuf },
    #[error(
        "refusing {}: it is served by {}, not by us",
        path.display(),
        uid.map_or_else(|| "another user".to_string(), |u| format!("uid {u}"))
    )]
    LocalForeign { path: PathBuf, uid: Option<u32> },
    #[error("the daemon at {} did not answer within {ms} ms", path.display())]
    LocalTimeout { path: PathBuf, ms: u128 },
    /// The daemon has no connection slot free.
    #[error("the daemon at {} refused the connection: {why}", path.display())]
    LocalBusy { path: PathBuf, why: String },
    /// NATS cannot be reached (or does not speak NATS).
    #[error("cannot connect to NATS at {url}: {source}")]
    NatsConnect {
        url: String,
        #[source]
        source: io::Error,
    },
    /// NATS refused our credentials, or a credentials file cannot be used.
    #[error("cannot connect to NATS at {url}: {source}")]
    NatsAuth {
        url: String,
        #[source]
        source: io::Error,
    },
    /// A credentials, certificate or key file named in the settings cannot
    /// be read.
    #[error("NATS {what} {}: {source}", path.display())]
    NatsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// TLS could not be set up: certificates, keys, or the handshake.
    #[error("cannot connect to NATS at {url}: {source}")]
    NatsTls {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("NATS: {0}")]
    Nats(#[source] io::Error),
    #[error("NATS did not confirm within {0} ms (is the server reachable?)")]
    FlushTimeout(u128),
    #[error("the connection to the daemon closed")]
    Closed,
    #[error("connection: {0}")]
    Io(#[source] io::Error),
}
