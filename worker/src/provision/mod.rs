//! Provisioning of projects: the drivers that create and remove a project's resources.

pub mod drivers;
