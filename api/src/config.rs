//! Configuration of `idp-api`, from the environment (or flags), validated at start.

use std::net::SocketAddr;

use clap::Parser;
use idp_ops::config::CommonConfig;

/// `idp-api`: the idp REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "idp-api", version, about)]
pub struct Config {
    /// Settings shared with the worker.
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "API_ADDR",
        value_name = "API_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub api_addr: SocketAddr,

    /// Seconds a request may take before it is answered 503.
    #[arg(long, env = "API_REQUEST_TIMEOUT_SECS", value_name = "API_REQUEST_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub request_timeout_secs: u64,
}
