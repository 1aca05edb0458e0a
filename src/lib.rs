//! mister-smith: run fleets of Claude Code CLI agents on servers.
//!
//! The binary is a thin shell over this library. Its layers import
//! downwards only: [`cli`] → [`runtime`] → [`transport`] → [`message`],
//! with [`config`] and [`error`] shared, and every `unsafe` call in
//! [`sys`] behind safe functions.

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod error;
pub mod message;
pub mod runtime;
pub mod sys;
pub mod transport;
