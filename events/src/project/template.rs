//! Project templates: which provisioning steps a project gets, which parameters it takes and
//! which files scaffold its repository. Operators can replace the built-in ones with JSON files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::name::{NameError, check_label};

/// The placeholder that stands for the project's name in template files.
pub const PROJECT_PLACEHOLDER: &str = "project";
/// The longest parameter value allowed, in characters.
pub const MAX_VALUE_LEN: usize = 256;

/// The kind of driver that carries out a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// A Postgres database and login role for the project.
    Database,
    /// A git repository scaffolded from the template's files.
    Repository,
    /// A signed POST of the project spec to a configured URL.
    Webhook,
}

impl DriverKind {
    /// The driver's name as in JSON (`database`, `repository`, `webhook`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Repository => "repository",
            Self::Webhook => "webhook",
        }
    }
}

/// One provisioning step of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the template, label-style (`repository`, `db-main`).
    pub name: String,
    /// Which driver runs it.
    pub driver: DriverKind,
}

/// A parameter a template takes; one without a default is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    /// Unique within the template, `[a-z][a-z0-9_]*`; `{{ name }}` in files.
    pub name: String,
    /// What it means, for people choosing a value.
    #[serde(default)]
    pub description: String,
    /// The value used when none is given.
    #[serde(default)]
    pub default: Option<String>,
}

impl ParameterSpec {
    /// True if a request must give a value.
    pub fn is_required(&self) -> bool {
        self.default.is_none()
    }
}

/// A project template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Unique in the catalogue, label-style (`service`).
    pub name: String,
    /// Bumped whenever the template changes; recorded with each project.
    pub version: u32,
    /// What the template is for.
    pub description: String,
    /// The parameters it takes.
    #[serde(default)]
    pub parameters: Vec<ParameterSpec>,
    /// The provisioning steps, run in this order and undone in reverse.
    pub steps: Vec<StepSpec>,
    /// The repository scaffold: relative path to content with `{{ parameter }}` placeholders
    /// (and `{{ project }}` for the project's name).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// What one project of this template costs per month, in cents (0: nothing), counted
    /// against its owner's monthly spend cap while the project is live.
    #[serde(default)]
    pub monthly_cost_cents: u64,
}

/// What is wrong with a template, or with the parameters given to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template's name breaks the label rules.
    #[error("template name {name:?} is not valid: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// The rule it breaks.
        reason: NameError,
    },
    /// Versions start at 1.
    #[error("template version must be at least 1")]
    ZeroVersion,
    /// Nothing to provision.
    #[error("a template needs at least one step")]
    NoSteps,
    /// A step's name breaks the label rules.
    #[error("step name {step:?} is not valid: {reason}")]
    InvalidStepName {
        /// The name.
        step: String,
        /// The rule it breaks.
        reason: NameError,
    },
    /// Two steps share a name.
    #[error("step {0:?} appears more than once")]
    DuplicateStep(String),
    /// A parameter's name is not `[a-z][a-z0-9_]*`.
    #[error(
        "parameter name {0:?} is not valid: it must start with a lowercase letter and contain only lowercase letters, digits and '_'"
    )]
    InvalidParameterName(String),
    /// A parameter is named like the project-name placeholder.
    #[error("parameter name {0:?} is reserved for the project's name")]
    ReservedParameter(String),
    /// Two parameters share a name.
    #[error("parameter {0:?} appears more than once")]
    DuplicateParameter(String),
    /// A scaffold file's path could escape the repository or is malformed.
    #[error("file path {path:?} is not allowed: {reason}")]
    InvalidFilePath {
        /// The path.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A value was given for a parameter the template does not have.
    #[error("unknown parameter {0:?}")]
    UnknownParameter(String),
    /// A required parameter was not given.
    #[error("parameter {0:?} is required")]
    MissingParameter(String),
    /// A value (given or default) is too long.
    #[error("the value of parameter {parameter:?} is longer than {max} characters")]
    ValueTooLong {
        /// The parameter.
        parameter: String,
        /// The limit.
        max: usize,
    },
    /// A value (given or default) contains a control character such as a newline.
    #[error("the value of parameter {parameter:?} contains a control character")]
    ControlCharacter {
        /// The parameter.
        parameter: String,
    },
}

impl Template {
    /// Checks the template's own rules (not any request's parameters).
    pub fn validate(&self) -> Result<(), TemplateError> {
        check_label(&self.name).map_err(|reason| TemplateError::InvalidName {
            name: self.name.clone(),
            reason,
        })?;
        if self.version == 0 {
            return Err(TemplateError::ZeroVersion);
        }
        if self.steps.is_empty() {
            return Err(TemplateError::NoSteps);
        }
        for (i, step) in self.steps.iter().enumerate() {
            check_label(&step.name).map_err(|reason| TemplateError::InvalidStepName {
                step: step.name.clone(),
                reason,
            })?;
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(TemplateError::DuplicateStep(step.name.clone()));
            }
        }
        for (i, parameter) in self.parameters.iter().enumerate() {
            if !is_parameter_name(&parameter.name) {
                return Err(TemplateError::InvalidParameterName(parameter.name.clone()));
            }
            if parameter.name == PROJECT_PLACEHOLDER {
                return Err(TemplateError::ReservedParameter(parameter.name.clone()));
            }
            if self.parameters[..i]
                .iter()
                .any(|p| p.name == parameter.name)
            {
                return Err(TemplateError::DuplicateParameter(parameter.name.clone()));
            }
            if let Some(default) = &parameter.default {
                check_value(&parameter.name, default)?;
            }
        }
        for path in self.files.keys() {
            check_file_path(path).map_err(|reason| TemplateError::InvalidFilePath {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    /// The value of every parameter for a request that gave `given`: defaults filled in, unknown
    /// and missing parameters refused, each value at most [`MAX_VALUE_LEN`] characters and free
    /// of control characters.
    pub fn resolve(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, TemplateError> {
        if let Some(unknown) = given
            .keys()
            .find(|name| !self.parameters.iter().any(|p| &p.name == *name))
        {
            return Err(TemplateError::UnknownParameter(unknown.clone()));
        }
        let mut values = BTreeMap::new();
        for parameter in &self.parameters {
            let value = given
                .get(&parameter.name)
                .or(parameter.default.as_ref())
                .ok_or_else(|| TemplateError::MissingParameter(parameter.name.clone()))?;
            check_value(&parameter.name, value)?;
            values.insert(parameter.name.clone(), value.clone());
        }
        Ok(values)
    }

    /// The scaffold files of project `project` rendered with the resolved `values`.
    pub fn render_files(
        &self,
        project: &str,
        values: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut values = values.clone();
        values.insert(PROJECT_PLACEHOLDER.to_owned(), project.to_owned());
        self.files
            .iter()
            .map(|(path, content)| (path.clone(), render(content, &values)))
            .collect()
    }
}

fn is_parameter_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_value(parameter: &str, value: &str) -> Result<(), TemplateError> {
    if value.chars().count() > MAX_VALUE_LEN {
        return Err(TemplateError::ValueTooLong {
            parameter: parameter.to_owned(),
            max: MAX_VALUE_LEN,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(TemplateError::ControlCharacter {
            parameter: parameter.to_owned(),
        });
    }
    Ok(())
}

/// Paths are written below the repository's root by the repository driver, so nothing may point
/// outside it, nor into `.git` (a hook there would run on the worker's host).
fn check_file_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.starts_with('/') {
        return Err("it must be relative, not absolute");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return Err("it must not contain backslashes or control characters");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("it must not have empty components"),
            "." | ".." => return Err("it must not have '.' or '..' components"),
            c if c.eq_ignore_ascii_case(".git") => {
                return Err("it must not write into the .git directory");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Replaces each `{{ name }}` (or `{{name}}`) whose name is in `values` by its value; anything
/// else, unknown names included, is left as it is. Values are inserted as they are and not
/// rendered again.
pub fn render(content: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after_open = &rest[open + 2..];
        let replaced = after_open.find("}}").and_then(|close| {
            values
                .get(after_open[..close].trim())
                .map(|value| (value, close))
        });
        match replaced {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after_open[close + 2..];
            }
            None => {
                // Not a placeholder of ours: keep the braces and look for one further on.
                out.push_str("{{");
                rest = after_open;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Why the template catalogue could not be loaded. Each message is complete in itself (it names
/// the file and says what is wrong), so there is no separate source error.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The override directory does not exist.
    #[error("template directory {} does not exist", .0.display())]
    MissingDirectory(PathBuf),
    /// The directory or a file in it could not be read.
    #[error("could not read {}: {error}", .path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A file is not a template in JSON.
    #[error("template file {} is not a valid template: {error}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        error: serde_json::Error,
    },
    /// A file is a template that breaks the template rules.
    #[error("template file {} is not a valid template: {error}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The broken rule.
        error: TemplateError,
    },
    /// Two files define the same template.
    #[error("template {name:?} is defined by both {} and {}", .first.display(), .second.display())]
    DuplicateOverride {
        /// The template's name.
        name: String,
        /// The first file defining it.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
}

/// The templates projects can be requested from, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    templates: BTreeMap<String, Template>,
}

impl Catalogue {
    /// The templates idp ships with: `service` and `static-site`.
    pub fn builtin() -> Self {
        let templates = [service_template(), static_site_template()]
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Self { templates }
    }

    /// The catalogue a process runs with: the built-in templates, with those of `dir` (the
    /// `PROJECT_TEMPLATES_DIR` setting) over them when it is set.
    pub fn load(dir: Option<&Path>) -> Result<Self, CatalogueError> {
        match dir {
            Some(dir) => Self::with_overrides(dir),
            None => Ok(Self::builtin()),
        }
    }

    /// The built-in templates, each replaced or joined by the template of the same name from the
    /// `*.json` files in `dir`. This reads files: it is meant to run once, at start-up.
    pub fn with_overrides(dir: &Path) -> Result<Self, CatalogueError> {
        let entries = std::fs::read_dir(dir).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => CatalogueError::MissingDirectory(dir.to_owned()),
            _ => CatalogueError::Io {
                path: dir.to_owned(),
                error,
            },
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|error| CatalogueError::Io {
                    path: dir.to_owned(),
                    error,
                })?
                .path();
            if path.extension().is_some_and(|e| e == "json") && path.is_file() {
                files.push(path);
            }
        }
        // Directory order is arbitrary; sorting makes errors the same on every start.
        files.sort();

        let mut catalogue = Self::builtin();
        let mut loaded_from: BTreeMap<String, PathBuf> = BTreeMap::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|error| CatalogueError::Io {
                path: path.clone(),
                error,
            })?;
            let template: Template =
                serde_json::from_str(&text).map_err(|error| CatalogueError::Parse {
                    path: path.clone(),
                    error,
                })?;
            template
                .validate()
                .map_err(|error| CatalogueError::Invalid {
                    path: path.clone(),
                    error,
                })?;
            if let Some(first) = loaded_from.get(&template.name) {
                return Err(CatalogueError::DuplicateOverride {
                    name: template.name,
                    first: first.clone(),
                    second: path,
                });
            }
            loaded_from.insert(template.name.clone(), path);
            catalogue.templates.insert(template.name.clone(), template);
        }
        Ok(catalogue)
    }

    /// The template called `name`.
    pub fn get(&self, name: &str) -> Option<&Template> {
        self.templates.get(name)
    }

    /// Every template, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.templates.values()
    }
}

fn parameter(name: &str, description: &str, default: &str) -> ParameterSpec {
    ParameterSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        default: Some(default.to_owned()),
    }
}

fn step(name: &str, driver: DriverKind) -> StepSpec {
    StepSpec {
        name: name.to_owned(),
        driver,
    }
}

fn service_template() -> Template {
    Template {
        name: "service".to_owned(),
        version: 1,
        description: "A backend service with a git repository, a Postgres database and a webhook \
                      announcing it."
            .to_owned(),
        parameters: vec![
            parameter(
                "description",
                "One line saying what the service does.",
                "A service",
            ),
            parameter("language", "The main programming language.", "rust"),
        ],
        steps: vec![
            step("repository", DriverKind::Repository),
            step("database", DriverKind::Database),
            step("webhook", DriverKind::Webhook),
        ],
        files: BTreeMap::from([
            (
                "README.md".to_owned(),
                "# {{ project }}\n\n{{ description }}\n\nLanguage: {{ language }}\n".to_owned(),
            ),
            // One `key=value` per line: values cannot hold newlines, so no quoting is needed.
            (
                ".idp/project.conf".to_owned(),
                "# Written by idp when the project was created.\n\
                 name={{ project }}\n\
                 template=service\n\
                 language={{ language }}\n"
                    .to_owned(),
            ),
        ]),
        // A database and a repository: two dollars a month.
        monthly_cost_cents: 200,
    }
}

fn static_site_template() -> Template {
    Template {
        name: "static-site".to_owned(),
        version: 1,
        description: "A static web site in a git repository, announced by a webhook.".to_owned(),
        parameters: vec![parameter(
            "description",
            "One line saying what the site is about.",
            "A static site",
        )],
        steps: vec![
            step("repository", DriverKind::Repository),
            step("webhook", DriverKind::Webhook),
        ],
        files: BTreeMap::from([
            (
                "README.md".to_owned(),
                "# {{ project }}\n\n{{ description }}\n".to_owned(),
            ),
            (
                "index.html".to_owned(),
                "<!doctype html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  \
                 <title>{{ project }}</title>\n</head>\n<body>\n  <h1>{{ project }}</h1>\n\
                 </body>\n</html>\n"
                    .to_owned(),
            ),
        ]),
        // A repository: fifty cents a month.
        monthly_cost_cents: 50,
    }
}

#[cfg(test)]
mod tests;
