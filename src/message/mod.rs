//! Messages: the envelope and its typed payloads, the subjects and the
//! routing table, and the priority queue tasks wait in.
//!
//! A leaf: pure types and functions, no threads, importing nothing of the
//! crate but `config` (for the agents' names and specs).

pub mod demand;
pub mod dispatcher;
pub mod envelope;
pub mod error;
pub mod failures;
pub(crate) mod lent;
pub mod queue;
pub mod router;
pub mod schemas;
pub(crate) mod sessions;
pub mod stream_view;
