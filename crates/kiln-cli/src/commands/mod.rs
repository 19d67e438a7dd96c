//! One module per command family; each parses nothing itself beyond its clap struct.

pub mod admin;
pub mod emit;
pub mod run;
pub mod serve;
pub mod watch;
