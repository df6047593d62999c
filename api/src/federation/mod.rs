//! Federated sign-in, the protocol side: the providers of `AUTH_PROVIDERS`, the start of a
//! flow (the authorization request and its browser-bound cookie), and its callback (the
//! cookie, `state`, the code exchange and the provider's answer checked), which yields an
//! [`Assertion`] for the identity service to sign in or link.
//!
//! Route and settings names: `GET /v1/auth/providers`, `GET /v1/auth/oidc/{provider}/start`,
//! `GET /v1/auth/oidc/{provider}/callback` (the redirect URI registered at the provider is
//! `PUBLIC_BASE_URL` + that path), `POST /v1/auth/oidc/exchange`; `AUTH_PROVIDERS`,
//! `AUTH_PROVIDERS_FILE`, `FEDERATION_STATE_KEYS`, `PROVIDER_SESSION_MAX_AGE`.

pub mod flow;
pub mod github;
pub mod oidc;
pub mod providers;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use idp_events::identity::display_name::DisplayName;
use idp_events::identity::email::Email;
use idp_events::keys::SecretKeys;
use oauth2::PkceCodeChallenge;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use url::Url;
use uuid::Uuid;

use self::flow::{FLOW_TTL_SECS, Flow};
use self::github::GithubProvider;
use self::oidc::OidcProvider;
use self::providers::{ProviderConfig, ProviderKind};
use crate::auth::tokens;
use crate::error::ApiError;
use crate::identity::{Assertion, FederatedSession};

/// Why a federated sign-in was refused; each is its own problem type.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FederationError {
    /// No provider has this id. 404.
    #[error("no such identity provider")]
    UnknownProvider,
    /// The provider is configured but disabled. 403 `provider-disabled`.
    #[error("the identity provider {0} is disabled")]
    ProviderDisabled(String),
    /// The callback does not belong to a flow this browser started (no cookie, a forged or
    /// expired one, another provider's, another `state`, or a flow completed already). 400
    /// `federation-state-invalid`.
    #[error("{0}; start the sign-in again")]
    FlowInvalid(String),
    /// `return_to` is not on an allowed origin. 400 `return-to-refused`.
    #[error("return_to: {0}")]
    ReturnToRefused(String),
    /// The provider refused (the person declined, the code is used or expired, the account is
    /// disabled or suspended there). 401 `provider-refused`.
    #[error("the identity provider refused the sign-in: {0}")]
    ProviderRefused(String),
    /// The provider's `id_token` failed validation. 401 `id-token-invalid`.
    #[error("the identity provider's id_token was refused: {0}")]
    TokenRejected(String),
    /// The address is not in the provider's `allowed_domains` (or not verified there). 403
    /// `email-domain-refused`.
    #[error("{0}")]
    DomainRefused(String),
    /// The provider could not be asked or answered nonsense. 502 `provider-unavailable`.
    #[error("the identity provider cannot be used now: {0}")]
    ProviderUnavailable(String),
}

impl From<FederationError> for ApiError {
    fn from(err: FederationError) -> Self {
        use FederationError as E;
        let (status, slug) = match &err {
            E::UnknownProvider => return Self::NotFound,
            E::ProviderDisabled(_) => (StatusCode::FORBIDDEN, "provider-disabled"),
            E::FlowInvalid(_) => (StatusCode::BAD_REQUEST, "federation-state-invalid"),
            E::ReturnToRefused(_) => (StatusCode::BAD_REQUEST, "return-to-refused"),
            E::ProviderRefused(_) => (StatusCode::UNAUTHORIZED, "provider-refused"),
            E::TokenRejected(_) => (StatusCode::UNAUTHORIZED, "id-token-invalid"),
            E::DomainRefused(_) => (StatusCode::FORBIDDEN, "email-domain-refused"),
            E::ProviderUnavailable(_) => (StatusCode::BAD_GATEWAY, "provider-unavailable"),
        };
        Self::refused(status, slug, &err)
    }
}

/// What a provider said of the person who signed in there: from a validated `id_token`
/// (OpenID Connect) or GitHub's user and email endpoints. Personal data: `Debug` shows none.
#[derive(Clone)]
pub struct ProviderClaims {
    /// The provider's stable id of the person (`sub`; GitHub's numeric user id, as text).
    pub subject: String,
    /// The address it gave (GitHub: the primary one, verified if one is).
    pub email: Option<String>,
    /// Whether it says `email` is verified.
    pub email_verified: bool,
    /// A name to show (GitHub: the profile name, else the login).
    pub name: Option<String>,
}

impl std::fmt::Debug for ProviderClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClaims").finish_non_exhaustive()
    }
}

/// A provider as `GET /v1/auth/providers` lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: ProviderKind,
    /// The name to show on its button.
    pub display_name: String,
    /// Where a browser starts signing in with it (add `?return_to=...`).
    pub start_url: String,
}

/// How the provider is spoken to.
#[derive(Debug)]
enum Protocol {
    Oidc(Box<OidcProvider>),
    Github(Box<GithubProvider>),
}

/// A configured provider.
#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    protocol: Protocol,
}

/// What the callback of a flow yields.
#[derive(Debug)]
pub struct Completed {
    /// The flow (where to return, whether it links).
    pub flow: Flow,
    /// Who the provider says signed in.
    pub assertion: Assertion,
}

/// The settings of federated sign-in.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    /// `AUTH_PROVIDERS` / `AUTH_PROVIDERS_FILE`, checked.
    pub providers: Vec<ProviderConfig>,
    /// `PUBLIC_BASE_URL`: callbacks are `{PUBLIC_BASE_URL}/v1/auth/oidc/{id}/callback`.
    pub public_base_url: Url,
    /// Origins a `return_to` may name: `PUBLIC_BASE_URL`'s and `CORS_ALLOWED_ORIGINS`.
    pub return_origins: Vec<String>,
    /// `PROVIDER_SESSION_MAX_AGE`.
    pub session_max_age: Duration,
    /// `FEDERATION_STATE_KEYS`.
    pub flow_keys: SecretKeys,
}

/// The federated sign-in service.
#[derive(Debug, Clone)]
pub struct Federation(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    providers: Vec<Provider>,
    http: reqwest::Client,
    pool: PgPool,
    flow_keys: SecretKeys,
    public_base_url: Url,
    return_origins: Vec<String>,
    session_max_age: chrono::Duration,
    secure_cookie: bool,
}

impl Federation {
    /// The service for `settings`.
    ///
    /// # Errors
    /// When a provider's endpoints cannot be built, or the HTTP client cannot start.
    pub fn new(settings: FederationSettings, pool: PgPool) -> anyhow::Result<Self> {
        let base = settings.public_base_url.as_str().trim_end_matches('/');
        let mut providers = Vec::with_capacity(settings.providers.len());
        for config in settings.providers {
            let redirect = Url::parse(&format!("{base}/v1/auth/oidc/{}/callback", config.id))?;
            let protocol = match config.kind {
                ProviderKind::Oidc => Protocol::Oidc(Box::new(
                    OidcProvider::new(&config, &redirect)
                        .map_err(|e| anyhow::anyhow!("provider {:?}: {e}", config.id))?,
                )),
                ProviderKind::Github => Protocol::Github(Box::new(
                    GithubProvider::new(&config, &redirect)
                        .map_err(|e| anyhow::anyhow!("provider {:?}: {e}", config.id))?,
                )),
            };
            providers.push(Provider { config, protocol });
        }
        // No redirects: a provider's endpoints answer directly, and following one could lead
        // the server anywhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self(Arc::new(Inner {
            providers,
            http,
            pool,
            secure_cookie: settings.public_base_url.scheme() == "https",
            flow_keys: settings.flow_keys,
            public_base_url: settings.public_base_url,
            return_origins: settings.return_origins,
            session_max_age: chrono::Duration::from_std(settings.session_max_age)
                .unwrap_or(chrono::Duration::hours(12)),
        })))
    }

    /// The enabled providers, in configuration order.
    pub fn list(&self) -> Vec<ProviderView> {
        let base = self.0.public_base_url.as_str().trim_end_matches('/');
        self.0
            .providers
            .iter()
            .filter(|p| p.config.enabled)
            .map(|p| ProviderView {
                id: p.config.id.clone(),
                kind: p.config.kind,
                display_name: p.config.display_name.clone(),
                start_url: format!("{base}/v1/auth/oidc/{}/start", p.config.id),
            })
            .collect()
    }

    /// `id` as a metrics label: a configured provider's id, else `unknown` (a path names it,
    /// and labels must stay few).
    pub fn label(&self, id: &str) -> String {
        if self.0.providers.iter().any(|p| p.config.id == id) {
            id.to_owned()
        } else {
            "unknown".to_owned()
        }
    }

    fn provider(&self, id: &str) -> Result<&Provider, FederationError> {
        let provider = self
            .0
            .providers
            .iter()
            .find(|p| p.config.id == id)
            .ok_or(FederationError::UnknownProvider)?;
        if !provider.config.enabled {
            return Err(FederationError::ProviderDisabled(id.to_owned()));
        }
        Ok(provider)
    }

    /// Checks a `return_to`: an absolute http(s) URL on an allowed origin, without
    /// credentials or fragment.
    fn check_return_to(&self, return_to: &str) -> Result<String, FederationError> {
        let refused = |why: &str| FederationError::ReturnToRefused(why.to_owned());
        let url = Url::parse(return_to).map_err(|_| refused("not an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused("not an http(s) URL"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(refused("must have no credentials or fragment"));
        }
        let origin = url.origin().ascii_serialization();
        if !self.0.return_origins.contains(&origin) {
            return Err(refused(
                "its origin is not allowed (PUBLIC_BASE_URL and CORS_ALLOWED_ORIGINS are)",
            ));
        }
        Ok(url.into())
    }

    /// Starts a flow with provider `id`: the authorization URL to send the browser to, and
    /// the `Set-Cookie` value that binds the flow to it. `link_user`: the flow links an
    /// identity to that signed-in account instead of signing in.
    pub async fn start(
        &self,
        id: &str,
        return_to: Option<&str>,
        link_user: Option<Uuid>,
    ) -> Result<(Url, String), FederationError> {
        let provider = self.provider(id)?;
        let return_to = return_to.map(|r| self.check_return_to(r)).transpose()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = tokens::random_token();
        let nonce = tokens::random_token();
        let url = match &provider.protocol {
            Protocol::Oidc(oidc) => {
                oidc.authorize_url(&self.0.http, &state, &nonce, challenge)
                    .await?
            }
            Protocol::Github(github) => github.authorize_url(&state, challenge),
        };
        let flow = Flow {
            provider: id.to_owned(),
            state,
            nonce: matches!(provider.protocol, Protocol::Oidc(_)).then_some(nonce),
            pkce_verifier: verifier.secret().clone(),
            return_to,
            link_user,
            expires: Utc::now().timestamp() + FLOW_TTL_SECS,
        };
        let cookie = flow::set_cookie(&flow::seal(&self.0.flow_keys, &flow), self.0.secure_cookie);
        metrics::counter!("idp_federated_flows_total", "provider" => id.to_owned(), "step" => "start")
            .increment(1);
        Ok((url, cookie))
    }

    /// Completes a flow at the callback of provider `id`: the browser's cookie must hold a
    /// flow of this provider with this `state`, not completed before; then the code is
    /// exchanged and the provider's answer checked.
    pub async fn callback(
        &self,
        id: &str,
        params: &CallbackParams,
        cookie: Option<&str>,
    ) -> Result<Completed, FederationError> {
        let provider = self.provider(id)?;
        let invalid = |why: &str| FederationError::FlowInvalid(why.to_owned());
        let value = cookie.ok_or_else(|| invalid("no sign-in was started in this browser"))?;
        let flow = flow::open(&self.0.flow_keys, value, Utc::now().timestamp())
            .map_err(|err| invalid(&err.to_string()))?;
        if flow.provider != id {
            return Err(invalid("this sign-in was started with another provider"));
        }
        let state = params
            .state
            .as_deref()
            .ok_or_else(|| invalid("the provider's answer has no state"))?;
        if !constant_time_eq(state.as_bytes(), flow.state.as_bytes()) {
            return Err(invalid("the state does not match this browser's sign-in"));
        }
        // A mix-up attack sends one provider's answer to another's callback.
        if let Some(iss) = &params.iss
            && iss.trim_end_matches('/') != provider.config.issuer.as_str().trim_end_matches('/')
        {
            return Err(invalid("the answer names another issuer"));
        }
        self.spend(&flow).await?;
        if let Some(error) = &params.error {
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(FederationError::ProviderRefused(code));
        }
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid("the provider's answer has no code"))?;
        let claims = match &provider.protocol {
            Protocol::Oidc(oidc) => {
                let nonce = flow.nonce.as_deref().unwrap_or_default();
                oidc.exchange(&self.0.http, code, &flow.pkce_verifier, nonce)
                    .await?
            }
            Protocol::Github(github) => {
                github
                    .exchange(&self.0.http, code, &flow.pkce_verifier)
                    .await?
            }
        };
        let verified = claims.email_verified;
        let email = claims.email.and_then(|e| Email::parse(&e).ok());
        // A name idp would refuse at registration (too long, control characters) is dropped.
        let name = claims
            .name
            .and_then(|n| DisplayName::parse(&n).ok().flatten())
            .map(DisplayName::into_inner);
        let config = &provider.config;
        if !config.allowed_domains.is_empty() {
            let domain = email
                .as_ref()
                .and_then(|e| e.as_str().rsplit_once('@'))
                .map(|(_, domain)| domain.to_owned());
            if domain.is_some() && !verified {
                return Err(FederationError::DomainRefused(format!(
                    "{} signs in only verified addresses of its allowed domains",
                    config.id
                )));
            }
            if !domain.is_some_and(|d| config.allowed_domains.contains(&d)) {
                return Err(FederationError::DomainRefused(format!(
                    "the address's domain is not one {} allows",
                    config.id
                )));
            }
        }
        metrics::counter!("idp_federated_flows_total", "provider" => id.to_owned(), "step" => "callback")
            .increment(1);
        Ok(Completed {
            assertion: Assertion {
                provider: config.id.clone(),
                subject: claims.subject,
                email_trusted: verified && config.trust_email_verified,
                email,
                name,
            },
            flow,
        })
    }

    /// Marks `flow` as completed; refused if it was already.
    async fn spend(&self, flow: &Flow) -> Result<(), FederationError> {
        let digest = Sha256::digest(flow.state.as_bytes()).to_vec();
        let spent = sqlx::query(
            "with expired as (delete from federated_flows_used where expires_at < now())
             insert into federated_flows_used (state_digest, expires_at)
             values ($1, to_timestamp($2)) on conflict do nothing",
        )
        .bind(digest)
        .bind(flow.expires as f64)
        .execute(&self.0.pool)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "could not record a federated sign-in's state");
            FederationError::ProviderUnavailable("the sign-in could not be recorded".into())
        })?
        .rows_affected();
        if spent == 0 {
            return Err(FederationError::FlowInvalid(
                "this sign-in was completed already".into(),
            ));
        }
        Ok(())
    }

    /// The bound of a session provider `provider` starts now (`PROVIDER_SESSION_MAX_AGE`).
    pub fn session(&self, provider: &str) -> FederatedSession {
        FederatedSession {
            provider: provider.to_owned(),
            session_until: Utc::now() + self.0.session_max_age,
        }
    }

    /// A `Set-Cookie` value that ends the flow's cookie.
    pub fn clear_cookie(&self) -> String {
        flow::clear_cookie(self.0.secure_cookie)
    }
}

/// The query of a callback.
#[derive(Debug, Default, Clone, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state` the flow sent.
    pub state: Option<String>,
    /// The provider's error code, when it refused (`access_denied`, ...).
    pub error: Option<String>,
    /// Its description.
    pub error_description: Option<String>,
    /// The issuer that answered (RFC 9207): when given, it must be the provider's.
    pub iss: Option<String>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
