//! Client subcommands: each module talks gRPC to a running service.

pub mod cases;
