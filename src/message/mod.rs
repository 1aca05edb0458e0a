//! Messages between agents: for now, the rules for names that become NATS
//! subject tokens. Envelopes, routing and dispatch build on these.

pub mod schemas;
