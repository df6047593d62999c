//! `GET /v1/templates`: the project templates a project can be requested from (the built-in
//! ones, with `PROJECT_TEMPLATES_DIR`'s over them).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use idp_events::project::Template;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/templates", get(list_templates))
}

/// Every template, in name order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"name": "service", "version": 1, "description": "A service with a database, a repository and a webhook",
    "parameters": [{"name": "language", "description": "Implementation language", "default": "rust", "required": false}],
    "steps": [{"name": "database", "driver": "database"}, {"name": "repository", "driver": "repository"}, {"name": "webhook", "driver": "webhook"}]}]}))]
pub struct TemplateList {
    /// The templates.
    pub items: Vec<TemplateView>,
}

/// A template: what a project gets and which parameters it takes.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    /// Its name, as given in `POST /v1/projects`.
    #[schema(example = "service")]
    pub name: String,
    /// Its version, recorded with each project requested from it.
    pub version: u32,
    /// What it is for.
    pub description: String,
    /// The parameters it takes.
    pub parameters: Vec<ParameterView>,
    /// The provisioning steps, in the order they run.
    pub steps: Vec<StepView>,
}

/// A parameter of a template.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParameterView {
    /// Its name, a key of `parameters` in `POST /v1/projects`.
    #[schema(example = "language")]
    pub name: String,
    /// What it means.
    pub description: String,
    /// The value used when none is given.
    pub default: Option<String>,
    /// True if a request must give a value (there is no default).
    pub required: bool,
}

/// A provisioning step of a template.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// Its name, unique within the template.
    #[schema(example = "database")]
    pub name: String,
    /// The driver that runs it: `database`, `repository` or `webhook`.
    #[schema(pattern = "^(database|repository|webhook)$")]
    pub driver: &'static str,
}

impl From<&Template> for TemplateView {
    fn from(template: &Template) -> Self {
        Self {
            name: template.name.clone(),
            version: template.version,
            description: template.description.clone(),
            parameters: template
                .parameters
                .iter()
                .map(|p| ParameterView {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    default: p.default.clone(),
                    required: p.is_required(),
                })
                .collect(),
            steps: template
                .steps
                .iter()
                .map(|s| StepView {
                    name: s.name.clone(),
                    driver: s.driver.as_str(),
                })
                .collect(),
        }
    }
}

/// Lists the project templates.
#[utoipa::path(get, path = "/v1/templates", tag = "projects", security(("bearer" = [])),
    responses((status = 200, description = "Every template, in name order", body = TemplateList)))]
#[tracing::instrument(name = "templates.list", skip_all)]
pub async fn list_templates(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList {
        items: state.catalogue.iter().map(TemplateView::from).collect(),
    }))
}
