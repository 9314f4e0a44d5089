//! Client subcommands: each talks gRPC to a running service at `--addr`.

pub mod models;
