//! Wiring for `mister-smith run`: signals, the health monitor and the
//! supervisor, on their own named threads.

use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;
use crate::runtime::error::ProcessError;
use crate::runtime::health_monitor;
use crate::runtime::supervisor::{Outcome, Supervisor};

/// Runs the daemon in the foreground until a signal stops it.
pub fn run(config: Config) -> Result<Outcome, ProcessError> {
    // Signal handlers are registered before any other thread exists
    // (signal-hook's documented limitation) and before any child is spawned.
    // SIGHUP and SIGQUIT stop the daemon like SIGTERM: a daemon that loses
    // its terminal should still take its agents down cleanly.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT])
        .map_err(|source| ProcessError::Signals { source })?;
    let signals_handle = signals.handle();
    let (sig_tx, sig_rx) = crossbeam_channel::bounded(8);
    let signal_thread = thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if sig_tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| ProcessError::DaemonThread {
            name: "signals",
            source,
        })?;

    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let (health_tx, health_rx) = crossbeam_channel::unbounded();
    let health_events = events_tx.clone();
    let health_thread = thread::Builder::new()
        .name("health".into())
        .stack_size(256 * 1024)
        .spawn(move || health_monitor::run(&health_rx, &health_events))
        .map_err(|source| ProcessError::DaemonThread {
            name: "health",
            source,
        })?;

    log::info!(
        "mister-smith {} daemon {} starting {} agents from {}",
        env!("CARGO_PKG_VERSION"),
        config.daemon_id,
        config.agents.len(),
        config.path.display()
    );
    // The supervisor runs on this thread: children are forked from it, and
    // PDEATHSIG is tied to the forking thread, which must outlive them.
    let outcome = Supervisor::new(config.agents, events_tx, events_rx, sig_rx, health_tx).run();

    signals_handle.close();
    let _ = signal_thread.join();
    let _ = health_thread.join();
    Ok(outcome)
}
