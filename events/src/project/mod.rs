//! Project domain: names, templates and the project aggregate whose provisioning and deletion
//! run step by step through drivers.
//!
//! Pure types and decisions, except [`Catalogue::with_overrides`] (reads template files at
//! start-up) and [`read_model`] (the inline `projects` table); the API and the worker perform
//! the decisions against the store.

pub mod credentials;
pub mod name;
// Named after the aggregate, like `identity::user`; the re-exports below spare callers the stutter.
#[allow(clippy::module_inception)]
pub mod project;
pub mod read_model;
pub mod template;

pub use credentials::{
    PASSWORD_KEY_ID, RecordedPasswordError, database_password, password_key_id,
    recorded_database_password,
};
pub use name::{NameError, ProjectName};
pub use project::{Project, ProjectError, ProjectEvent, ProjectStatus, StepState, StepStatus};
pub use template::{
    Catalogue, CatalogueError, DriverKind, ParameterSpec, StepSpec, Template, TemplateError, render,
};
