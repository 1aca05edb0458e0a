//! The admin thread of durable mode: the blocking JetStream requests, kept
//! off the pump. It creates the streams and the consumers (again, should
//! the server lose them), and every two seconds reads each consumer's
//! backlog for `status` — which doubles as the probe that tells `health`
//! whether JetStream answers.

// The blocking `nats` crate is deprecated upstream; see nats_transport.rs.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::Value;

use crate::config::JetStreamConfig;
use crate::transport::jetstream::api::{self, JsError, CONSUMER_NOT_FOUND, STREAM_NOT_FOUND};
use crate::transport::jetstream::{ConsumerSpec, JsCmd, JsState};

/// The bound of each request.
const REQUEST: Duration = Duration::from_secs(2);

/// How often the consumers' state is read (and lost ones made again).
const POLL: Duration = Duration::from_secs(2);

pub(crate) struct Admin {
    pub conn: nats::Connection,
    pub config: JetStreamConfig,
    pub specs: Vec<ConsumerSpec>,
    pub to_pump: Sender<JsCmd>,
    pub state: Arc<JsState>,
}

impl Admin {
    /// The loop, for the daemon's life.
    pub(crate) fn run(self) {
        let mut ready = vec![false; self.specs.len()];
        let mut said = String::new();
        loop {
            match self.setup(&mut ready).and_then(|()| self.poll(&mut ready)) {
                Ok(()) => {
                    if !said.is_empty() {
                        log::info!("JetStream answers again");
                        said.clear();
                    }
                    self.state.set_reachable();
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != said {
                        log::warn!("{text}; durable tasks wait until it answers");
                        said = text.clone();
                    }
                    self.state.set_unreachable(text);
                }
            }
            // A period, not a wait for an event: the next look is due.
            std::thread::sleep(POLL);
        }
    }

    /// Makes the streams and every consumer not known to exist.
    fn setup(&self, ready: &mut [bool]) -> Result<(), JsError> {
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        api::ensure_streams(&self.conn, &self.config, REQUEST)?;
        let made = ready.iter().filter(|r| !**r).count();
        for (i, spec) in self.specs.iter().enumerate() {
            if ready[i] {
                continue;
            }
            let (subject, body) = api::consumer(&self.config, &spec.name, &spec.filter);
            api::request(&self.conn, &subject, &body, REQUEST).map_err(|e| match e {
                JsError::Api { description, .. } => JsError::Other(format!(
                    "cannot create consumer {} of stream {}: {description}",
                    spec.name, self.config.stream
                )),
                e => e,
            })?;
            ready[i] = true;
            let _ = self.to_pump.send(JsCmd::Ready(i));
        }
        log::info!(
            "durable tasks: {made} consumer(s) of stream {} ready (results in {})",
            self.config.stream,
            self.config.results_stream
        );
        Ok(())
    }

    /// Reads each consumer's backlog; a consumer the server no longer has
    /// is made again at the next pass.
    fn poll(&self, ready: &mut [bool]) -> Result<(), JsError> {
        // A stream deleted under a running daemon is made again (results
        // could not be stored, nor tasks taken, without it).
        api::ensure_streams(&self.conn, &self.config, REQUEST)?;
        for (i, spec) in self.specs.iter().enumerate() {
            let subject = api::consumer_info(&self.config.stream, &spec.name);
            match api::request(&self.conn, &subject, b"", REQUEST) {
                Ok(v) => {
                    let pending = v.get("num_pending").and_then(Value::as_u64).unwrap_or(0);
                    self.state.set_pending(&spec.name, pending);
                }
                Err(e) if matches!(e.err_code(), Some(CONSUMER_NOT_FOUND | STREAM_NOT_FOUND)) => {
                    log::warn!(
                        "JetStream: consumer {} of stream {} is gone; making it again",
                        spec.name,
                        self.config.stream
                    );
                    ready[i] = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
