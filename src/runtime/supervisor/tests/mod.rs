//! The supervisor's state machine, driven by hand: no process is started
//! and nothing sleeps. [`harness`] is the fake world; the tests are by
//! concern.

mod harness;
mod holds;
mod lifecycle;
mod reload;
mod sessions;
mod tasks;
