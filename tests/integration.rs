//! Integration tests: the real `mister-smith` binary, real child processes,
//! and (for transports) a real `nats-server`. One test binary, a module per
//! feature.

mod support;

mod accounts;
mod chaos;
mod check_config;
mod contract;
mod conversations;
mod durable;
mod durable_cluster;
mod faults;
mod fuzz;
mod man;
mod nats;
mod operate;
mod pipelines;
mod reload;
mod security;
mod sessions;
mod supervise;
mod tasks;
mod tidy;
