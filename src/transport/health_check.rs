//! The NATS liveness probe.
//!
//! The crate pings the server only after two minutes without writes, so a
//! half-open connection can go unnoticed for minutes. The daemon therefore
//! flushes (PING/PONG) every ten seconds on a helper thread with a bounded
//! wait, and reports a connection that does not answer as reconnecting.

// The blocking `nats` crate is deprecated upstream in favour of async-nats;
// the design fixes it (no async runtime), and it stays behind this module.
#![allow(deprecated)]

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::transport::nats_transport::NatsState;

const EVERY: Duration = Duration::from_secs(10);
const WITHIN: Duration = Duration::from_secs(5);

/// Starts the probe thread for `conn`.
pub fn spawn_probe(conn: nats::Connection, state: Arc<NatsState>) {
    let spawned = thread::Builder::new()
        .name("nats-probe".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let tick = crossbeam_channel::tick(EVERY);
            // At most one ping at a time: while disconnected a ping blocks
            // until the reconnection, and must not be joined by more.
            let mut pending: Option<(crossbeam_channel::Receiver<bool>, std::time::Instant)> = None;
            for _ in tick.iter() {
                if state.describe() == "closed" {
                    return;
                }
                if let Some((rx, since)) = &pending {
                    match rx.try_recv() {
                        Ok(true) => state.set_connected(),
                        Ok(false) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            state.set_reconnecting()
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => {
                            if since.elapsed() >= WITHIN {
                                log::warn!(
                                    "NATS did not answer a ping within {} ms",
                                    WITHIN.as_millis()
                                );
                                state.set_reconnecting();
                            }
                            continue;
                        }
                    }
                }
                pending = ping(&conn).map(|rx| (rx, std::time::Instant::now()));
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the NATS probe: {e}");
    }
}

/// Starts one PING/PONG on its own thread (the crate's flush may block past
/// any timeout while disconnected); its answer arrives on the receiver.
fn ping(conn: &nats::Connection) -> Option<crossbeam_channel::Receiver<bool>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let c = conn.clone();
    thread::Builder::new()
        .name("nats-ping".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = tx.send(c.flush().is_ok());
        })
        .ok()?;
    Some(rx)
}
