//! Provisioning of projects: the drivers that create and remove a project's resources, and the
//! operator's hardening of the databases provisioned so far.

pub mod drivers;
pub mod harden;
