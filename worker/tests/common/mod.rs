//! Support shared by the worker's integration tests (`mod common;` in each test file), built on
//! `idp_testkit`: `harness` starts the worker (in process or as the binary) and the API.

pub mod harness;
