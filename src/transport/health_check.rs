//! The daemon's view of its NATS connection, and the probe that keeps it
//! honest.
//!
//! The crate pings the server only after two minutes without writes, so a
//! half-open connection can go unnoticed for minutes. The daemon therefore
//! flushes (PING/PONG) every ten seconds on a helper thread with a bounded
//! wait, and reports a connection that does not answer as reconnecting.

// The blocking `nats` crate is deprecated upstream in favour of async-nats;
// the design fixes it (no async runtime), and it stays behind this layer.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::message::schemas::LinkState;

const EVERY: Duration = Duration::from_secs(10);
const WITHIN: Duration = Duration::from_secs(5);

/// The link state, shared between the connection's callbacks, the probe
/// and the supervisor's reports, and the server's largest message.
#[derive(Debug)]
pub(crate) struct NatsState(AtomicU8, AtomicUsize, AtomicUsize);

impl Default for NatsState {
    fn default() -> Self {
        NatsState(
            AtomicU8::new(Self::code(LinkState::Off)),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        )
    }
}

impl NatsState {
    const ALL: [LinkState; 5] = [
        LinkState::Off,
        LinkState::Connected,
        LinkState::Reconnecting,
        LinkState::Closed,
        LinkState::Refused,
    ];

    fn code(s: LinkState) -> u8 {
        Self::ALL.iter().position(|&x| x == s).unwrap_or(0) as u8
    }

    pub(crate) fn set(&self, s: LinkState) {
        self.0.store(Self::code(s), Ordering::Relaxed);
    }

    /// Counts a reconnect: a loss too short for anyone to see the state
    /// change is still told by the count.
    pub(crate) fn reconnected(&self) {
        self.2.fetch_add(1, Ordering::SeqCst);
        self.set(LinkState::Connected);
    }

    /// How many times the connection came back.
    pub(crate) fn reconnects(&self) -> usize {
        self.2.load(Ordering::SeqCst)
    }

    /// Records the server's `max_payload`.
    pub(crate) fn set_max_payload(&self, bytes: usize) {
        self.1.store(bytes, Ordering::Relaxed);
    }

    /// The largest message the server takes, once connected.
    pub(crate) fn max_payload(&self) -> Option<usize> {
        Some(self.1.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    pub(crate) fn get(&self) -> LinkState {
        Self::ALL
            .get(usize::from(self.0.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(LinkState::Closed)
    }
}

/// Starts the probe thread for `conn`.
pub(crate) fn spawn_probe(conn: nats::Connection, state: Arc<NatsState>) {
    let spawned = thread::Builder::new()
        .name("nats-probe".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let tick = crossbeam_channel::tick(EVERY);
            // At most one ping at a time: while disconnected a ping blocks
            // until the reconnection, and must not be joined by more.
            let mut pending: Option<(Receiver<bool>, Instant)> = None;
            for _ in tick.iter() {
                if state.get() == LinkState::Closed {
                    return;
                }
                if let Some((rx, since)) = &pending {
                    match rx.try_recv() {
                        Ok(true) => state.set(LinkState::Connected),
                        Ok(false) | Err(TryRecvError::Disconnected) => {
                            state.set(LinkState::Reconnecting)
                        }
                        Err(TryRecvError::Empty) => {
                            if since.elapsed() >= WITHIN {
                                log::warn!(
                                    "NATS did not answer a ping within {} ms",
                                    WITHIN.as_millis()
                                );
                                state.set(LinkState::Reconnecting);
                            }
                            continue;
                        }
                    }
                }
                pending = ping(&conn).map(|rx| (rx, Instant::now()));
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the NATS probe: {e}");
    }
}

/// Starts one PING/PONG on its own thread (the crate's flush may block past
/// any timeout while disconnected); its answer arrives on the receiver.
fn ping(conn: &nats::Connection) -> Option<Receiver<bool>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_holds_every_link_state() {
        let s = NatsState::default();
        assert_eq!(s.get(), LinkState::Off);
        for st in NatsState::ALL {
            s.set(st);
            assert_eq!(s.get(), st);
        }
    }
}
