//! Test support shared by the integration tests of `idp-api` and `idp-worker`: what both sides
//! need to run a test against real servers without sharing anything with the tests running
//! beside it.
//!
//! - [`database`]: the test's own database (from `#[sqlx::test]`), its URL, pools, a
//!   trigger-skipping superuser connection.
//! - [`log`]: the event log as tests watch it: counts, the last committed cursor, waiting
//!   until commit-safe readers see everything, catching a subscription up.
//! - [`broker`]: the broker's URL, a queue prefix of the test's own, and cleaning up after it.
//! - [`keys`]: the key rings every test binary is configured with.
//! - [`settings`]: the command lines of test APIs and workers (each side parses them with its
//!   own `Config`; this crate depends on neither binary's crate).
//! - [`server`]: a server running on the test's runtime, stopped on request; [`http`]: a
//!   client of a running API.
//! - [`proxy`], [`smtp`], [`webhook`]: the fault-injecting TCP proxy, the SMTP sink and the
//!   provisioning webhook server.
//! - [`oidc_provider`]: the OpenID Connect provider `oidc-provider` (Node.js), run for real;
//!   [`fake_idp`]: an OpenID Connect issuer that misbehaves on request, and a GitHub OAuth server.
//! - [`clock`]: waiting for a condition with a deadline, timing statistics, RFC 3339 instants.
//! - [`metrics`]: exclusive use of the process's metrics registry.
//! - [`process`]: binaries run as child processes (SIGTERM, their output).
//!
//! A failed set-up fails the test, so this crate panics where a library would return errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod broker;
pub mod clock;
pub mod database;
pub mod fake_idp;
pub mod http;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod oidc_provider;
pub mod process;
pub mod proxy;
pub mod server;
pub mod settings;
pub mod smtp;
pub mod webhook;
