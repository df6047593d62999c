//! The idp worker: turns the facts in the event log into read models and effects.
//!
//! It hosts the async projections (one subscription each, single-active across worker
//! processes), serves health and metrics on `WORKER_ADDR`, and offers operator commands
//! (`rebuild`, `verify`, `replay`, `harden-databases`). `main.rs` only parses the command line and calls into here.

pub mod breaker;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dispatcher;
pub mod email;
pub mod housekeeping;
pub mod jobs;
pub mod lag;
pub mod projections;
pub mod provision;
pub mod sealer;
pub mod startup;
