//! Drivers: each creates (`provision`) and removes (`deprovision`) one kind of resource of a
//! project, for real, on systems this machine can reach.
//!
//! Every driver is idempotent, because a step may run again after a retry, a redelivery or a
//! crash half-way: provisioning twice (even at once) leaves exactly one resource and succeeds
//! both times, and deprovisioning something already gone succeeds. `provision` returns the
//! step's outputs, which are recorded in the event log and so must never hold a secret.
//! Errors say whether retrying may help ([`DriverError::Transient`]) or not
//! ([`DriverError::Permanent`]); their texts name the step and never contain secrets.

pub mod database;
pub mod repository;
pub mod webhook;

use std::collections::BTreeMap;

use uuid::Uuid;

pub use database::{DatabaseDriver, Hardened, Password, close_own_database, database_password};
pub use repository::RepositoryDriver;
pub use webhook::{WebhookDriver, signature};

/// What a driver knows about the project whose step it runs.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The project.
    pub project_id: Uuid,
    /// Its name: a DNS label, already validated.
    pub project_name: &'a str,
    /// The user who owns it.
    pub owner_id: Uuid,
    /// The template it was requested from.
    pub template: &'a str,
    /// The version of that template.
    pub template_version: u32,
    /// The template's parameters as the owner gave them.
    pub parameters: &'a BTreeMap<String, String>,
    /// Repository scaffold, already rendered: relative path -> content.
    pub files: &'a BTreeMap<String, String>,
}

/// Why a driver's step failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Retrying later may help (timeouts, connection refused, 5xx, 408, 429, lock contention).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (4xx, invalid input, misconfiguration).
    #[error("{0}")]
    Permanent(String),
}

impl DriverError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}
