//! mister-smith: run fleets of Claude Code CLI agents on servers.
//!
//! The binary is a thin shell over this library. Its layers import
//! downwards only: [`cli`] → [`runtime`] → [`transport`] → [`message`],
//! with [`config`] and [`error`] shared, and every `unsafe` call in
//! [`sys`] behind safe functions.

#![deny(unsafe_code)]
// The public surface is what the binary, the tests and the bench use;
// everything else is the crate's own.
#![warn(unreachable_pub)]

pub mod cli;
pub mod config;
mod error;
pub mod message;
pub mod runtime;
pub mod sys;
mod transport;
