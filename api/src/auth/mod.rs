//! Identity: passwords, tokens, signing keys and rate limits.

pub mod captcha;
pub mod keys;
pub mod password;
pub mod permissions;
pub mod rate_limit;
pub mod second_factor;
pub mod tokens;
