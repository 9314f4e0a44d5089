//! Client subcommands of the `tollgate` binary, one module each.

pub mod cache;
pub mod tokenize;
