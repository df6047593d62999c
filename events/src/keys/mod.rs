//! Every server key, in one home: where keys live and how they are read, made and rotated.
//!
//! One key, one purpose, each with an id and a rotation story:
//!
//! - asymmetric Ed25519 key pairs in key directories ([`dir`], [`signing`], published as
//!   [`jwks`]): the API's access-token signing keys (`JWT_KEYS_DIR`) and the worker's seal
//!   keys (`SEAL_KEYS_DIR`, [`crate::seal`]), never one for the other;
//! - secret rings ([`ring`]): the email-token MAC, project-database password derivation and
//!   the address digest, each from its own variable.
//!
//! Every failure is a [`KeyError`] naming the file, directory or variable, never the material.
//! Key material in memory is held in types whose `Debug` does not show it and that zero it when
//! dropped.

pub mod dir;
mod error;
pub mod jwks;
pub mod ring;
pub mod signing;

pub use error::{KeyError, KeyKind};
pub use ring::{MIN_SECRET_LEN, SecretKey, SecretKeys};
pub use signing::KeyFile;
