//! The measurements, one file each, named as `--only` names them; each
//! returns its rows of the table.

pub(super) mod cold;
pub(super) mod dispatcher;
pub(super) mod durable;
pub(super) mod memory;
pub(super) mod restart;
pub(super) mod rtt;
pub(super) mod send;
pub(super) mod spawn;
pub(super) mod throughput;
pub(super) mod transcripts;
