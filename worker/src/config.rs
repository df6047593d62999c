//! Configuration and command line of `idp-worker`.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use idp_ops::config::CommonConfig;

/// `idp-worker`: projections, dispatcher and jobs of idp.
#[derive(Debug, Clone, Parser)]
#[command(name = "idp-worker", version, about)]
pub struct Config {
    /// Settings shared with the API.
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address of the worker's health and metrics listener.
    #[arg(
        long,
        env = "WORKER_ADDR",
        value_name = "WORKER_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub worker_addr: SocketAddr,

    /// What to do; without a command the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the projections (the default).
    Run,
    /// Empty a projection's read model and replay the log into it, showing progress.
    Rebuild {
        /// The projection, e.g. `event_type_counts`.
        name: String,
    },
    /// Recompute the hash chain of every stream and report the first broken link.
    Verify {
        /// Only streams whose id starts with this, e.g. `user-`.
        #[arg(long)]
        stream_prefix: Option<String>,
    },
}
