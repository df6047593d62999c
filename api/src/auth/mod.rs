//! Identity: passwords, tokens, signing keys and rate limits.

pub mod keys;
pub mod password;
pub mod rate_limit;
pub mod tokens;
