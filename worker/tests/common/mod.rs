//! Support shared by the worker's integration tests (`mod common;` in each test file).

pub mod harness;
pub mod smtp;
pub mod webhook;
