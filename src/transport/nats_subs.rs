//! The daemon's NATS subscriptions: made once connected, changed by a
//! reload, and the loop that hands their messages to the inbound handler.

// The blocking `nats` crate is deprecated upstream in favour of an async
// one; this project is synchronous by design.
#![allow(deprecated)]

use std::time::Duration;

use crossbeam_channel::{Receiver, Select};

use crate::message::router::Sub;
use crate::transport::Handler;

/// Subscribes to each of `subs` not in `have` yet.
pub(super) fn subscribe(
    conn: &nats::Connection,
    subs: &[Sub],
    have: &mut Vec<(Sub, nats::Subscription)>,
) {
    for want in subs {
        if have.iter().any(|(s, _)| s == want) {
            continue;
        }
        let sub = match &want.queue {
            Some(q) => conn.queue_subscribe(&want.subject, q),
            None => conn.subscribe(&want.subject),
        };
        match sub {
            Ok(s) => {
                // Bound what a stuck receiver can hold (the crate's queues
                // are unbounded by default).
                s.set_message_limits(65_536);
                have.push((want.clone(), s));
            }
            Err(e) => log::error!("NATS: cannot subscribe to {}: {e}", want.subject),
        }
    }
}

/// Hands every message of every subscription to `inbound`; a reload's
/// subscriptions (on `changes`) replace the ones held.
pub(super) fn receive_loop(
    conn: &nats::Connection,
    mut subs: Vec<(Sub, nats::Subscription)>,
    changes: &Receiver<Vec<Sub>>,
    inbound: &Handler,
) {
    loop {
        let mut sel = Select::new();
        for (_, s) in &subs {
            sel.recv(s.receiver());
        }
        let reload = sel.recv(changes);
        let op = sel.select();
        let i = op.index();
        if i == reload {
            let Ok(wanted) = op.recv(changes) else {
                // The daemon let go of the sender: no more reloads.
                return receive_loop(conn, subs, &crossbeam_channel::never(), inbound);
            };
            let (keep, gone): (Vec<_>, Vec<_>) =
                subs.into_iter().partition(|(s, _)| wanted.contains(s));
            for (s, sub) in gone {
                if let Err(e) = sub.unsubscribe() {
                    log::warn!("NATS: cannot unsubscribe from {}: {e}", s.subject);
                }
            }
            subs = keep;
            subscribe(conn, &wanted, &mut subs);
            if let Err(e) = conn.flush_timeout(Duration::from_secs(5)) {
                log::warn!("NATS: subscriptions not confirmed: {e}");
            }
            log::info!("NATS: {} subscriptions after the reload", subs.len());
            continue;
        }
        match op.recv(subs[i].1.receiver()) {
            Ok(msg) => inbound(&msg.subject, msg.reply.as_deref(), &msg.data),
            Err(_) => {
                log::error!("NATS subscription closed");
                return;
            }
        }
    }
}
