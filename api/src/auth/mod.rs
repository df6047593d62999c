//! Identity: passwords, tokens, API keys, signing keys, plans and rate limits.

pub mod api_key;
pub mod captcha;
pub mod keys;
pub mod password;
pub mod permissions;
pub mod plans;
pub mod rate_limit;
pub mod request_limits;
pub mod second_factor;
pub mod tokens;
