//! The dispatcher thread: drives the queue of `message::dispatcher` with
//! its commands and the clock, and nothing else. It owns the queue; it
//! shares nothing but channels.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{at, never, select_biased, Receiver};

use crate::message::demand::Demand;
use crate::message::dispatcher::{DispatchCmd, DispatchSink, Dispatcher};
use crate::transport::jetstream::DemandLink;

/// The thread's loop: returns once every sender is gone. `queued` mirrors
/// the queue's length for status reports. In durable mode, what the queue
/// wants from the stream goes to the pump whenever it changes.
pub(crate) fn run(
    inbox: &Receiver<DispatchCmd>,
    mut dispatcher: Dispatcher,
    queued: &Arc<AtomicUsize>,
    sink: &dyn DispatchSink,
    pump: Option<&DemandLink>,
) {
    let mut said = Demand::default();
    loop {
        if let Some(pump) = pump {
            if let Some(d) = dispatcher.demand().filter(|d| *d != said) {
                pump.put(d.clone());
                said = d;
            }
        }
        let timer = dispatcher.next_deadline().map_or_else(never, at);
        select_biased! {
            recv(inbox) -> cmd => {
                let Ok(cmd) = cmd else { return };
                dispatcher.handle(cmd, sink);
            },
            recv(timer) -> _ => dispatcher.expire(Instant::now(), sink),
        }
        queued.store(dispatcher.queued(), Ordering::Relaxed);
    }
}
