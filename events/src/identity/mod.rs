//! Identity domain: users and sessions as event-sourced aggregates, the values people type in
//! that they hold (email addresses, display names), and one-time tokens.
//!
//! Pure types and decisions only; the API performs them against the store.

pub mod address_digest;
pub mod api_key;
pub mod consent;
pub mod display_name;
pub mod email;
pub mod email_request;
pub mod login;
pub mod one_time_token;
pub mod plan;
pub mod service_account;
pub mod session;
pub mod user;

pub(crate) use crate::tagged::{from_recorded, to_new_event};
