//! Identity: passwords, tokens, signing keys, rate limits, second factors and CAPTCHA checks.

pub mod captcha;
pub mod keys;
pub mod password;
pub mod rate_limit;
pub mod second_factor;
pub mod tokens;
