//! The idp REST API: validates requests, decides, and appends domain events to the log.
//!
//! `main.rs` only reads the configuration and calls [`startup::Application`]; tests build the
//! same application on a random port.

pub mod access;
pub mod auth;
pub mod client_address;
pub mod client_device;
pub mod config;
pub mod error;
pub mod extract;
pub mod federation;
pub mod identity;
pub mod projects;
pub mod routes;
pub mod startup;
