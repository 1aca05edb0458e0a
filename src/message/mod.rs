//! Messages: the envelope and its typed payloads, routing of destinations
//! to subjects, and the priority dispatcher.

pub mod dispatcher;
pub mod envelope;
pub mod error;
pub mod router;
pub mod schemas;
