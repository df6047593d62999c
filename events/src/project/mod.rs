//! Project domain: names, templates and the project aggregate whose provisioning and deletion
//! run step by step through drivers.
//!
//! Pure types and decisions only (the one exception is [`Catalogue::with_overrides`], which reads
//! template files at start-up); the API and the worker perform them against the store.

pub mod name;
// Named after the aggregate, like `identity::user`; the re-exports below spare callers the stutter.
#[allow(clippy::module_inception)]
pub mod project;
pub mod template;

pub use name::{NameError, ProjectName};
pub use project::{
    Project, ProjectError, ProjectEvent, ProjectStatus, StepState, StepStatus, stream_id,
};
pub use template::{
    Catalogue, CatalogueError, DriverKind, ParameterSpec, StepSpec, Template, TemplateError, render,
};
