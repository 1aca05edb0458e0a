//! Errors of the transports.

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
    #[error("cannot listen on {}: {source}", path.display())]
    LocalListen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another daemon is already serving {}", path.display())]
    LocalInUse { path: PathBuf },
    #[error("cannot connect to NATS at {url}: {source}")]
    NatsConnect {
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
    #[error("{0}")]
    Protocol(String),
}

impl TransportError {
    /// Whether this is a credentials or configuration problem (exit 78)
    /// rather than an unavailable peer (exit 69).
    pub fn is_config(&self) -> bool {
        match self {
            TransportError::NatsConnect { source, .. } => {
                let msg = source.to_string().to_lowercase();
                source.kind() == io::ErrorKind::PermissionDenied
                    || msg.contains("authorization")
                    || msg.contains("authentication")
                    || msg.contains("certificate")
                    || msg.contains("tls")
                    || msg.contains("credentials")
            }
            TransportError::LocalListen { .. } => true,
            _ => false,
        }
    }
}
