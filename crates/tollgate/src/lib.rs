//! The one tollgate binary, as a library so that tests and tools can start the gateway
//! in-process: [`config::Config`] is the whole configuration, [`serve::start`] starts any
//! selection of services on already-bound listeners.
//!
//! `main.rs` stays thin: parse the command line, load config, start telemetry, call into here.

pub mod cli;
pub mod commands;
pub mod config;
pub mod serve;
