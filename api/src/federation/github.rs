//! GitHub (and GitHub Enterprise Server): OAuth 2.0 web flow with PKCE, then its REST API's
//! `GET /user` and `GET /user/emails` (GitHub is not an OpenID Connect provider). The subject is
//! GitHub's numeric user id, which stays when a login is renamed.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::providers::ProviderConfig;
use super::{FederationError, ProviderClaims};

/// A GitHub server.
#[derive(Debug)]
pub struct GithubProvider {
    auth_url: AuthUrl,
    token_url: TokenUrl,
    api_url: Url,
    client_id: ClientId,
    client_secret: SecretString,
    redirect: RedirectUrl,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
struct User {
    id: u64,
    login: String,
    name: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct Address {
    email: String,
    primary: bool,
    verified: bool,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

impl GithubProvider {
    /// The server of `config` (`issuer`: its web base; `api_url`: its REST API), whose
    /// callback is `redirect`.
    ///
    /// # Errors
    /// When an endpoint cannot be built.
    pub fn new(config: &ProviderConfig, redirect: &Url) -> Result<Self, String> {
        let web = config.issuer.as_str().trim_end_matches('/');
        let api_url = config
            .api_url
            .clone()
            .ok_or_else(|| "api_url is missing".to_owned())?;
        Ok(Self {
            auth_url: AuthUrl::new(format!("{web}/login/oauth/authorize"))
                .map_err(|e| e.to_string())?,
            token_url: TokenUrl::new(format!("{web}/login/oauth/access_token"))
                .map_err(|e| e.to_string())?,
            api_url,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: config.client_secret.clone(),
            redirect: RedirectUrl::from_url(redirect.clone()),
            scopes: config.scopes.clone(),
        })
    }

    fn client(
        &self,
    ) -> BasicClient<
        oauth2::EndpointSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    > {
        BasicClient::new(self.client_id.clone())
            .set_client_secret(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            ))
            // GitHub documents the credentials in the form body.
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(self.auth_url.clone())
            .set_token_uri(self.token_url.clone())
            .set_redirect_uri(self.redirect.clone())
    }

    /// The authorization request's URL.
    pub fn authorize_url(&self, state: &str, challenge: PkceCodeChallenge) -> Url {
        let state = state.to_owned();
        let (url, _) = self
            .client()
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(self.scopes.iter().map(|s| Scope::new(s.clone())))
            .set_pkce_challenge(challenge)
            .url();
        url
    }

    /// Exchanges `code` (with the PKCE `verifier`) and reads who signed in.
    pub async fn exchange(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &str,
    ) -> Result<ProviderClaims, FederationError> {
        let token = self
            .client()
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(http)
            .await
            .map_err(|err| match err {
                RequestTokenError::ServerResponse(answer) => {
                    FederationError::ProviderRefused(answer.error().to_string())
                }
                // GitHub answers a refused code with 200 and an `error` field.
                RequestTokenError::Parse(_, body) => {
                    match serde_json::from_slice::<ErrorAnswer>(&body) {
                        Ok(answer) => FederationError::ProviderRefused(answer.error),
                        Err(_) => FederationError::ProviderUnavailable(
                            "its token answer could not be read".into(),
                        ),
                    }
                }
                other => {
                    tracing::warn!(error = %other, "GitHub token request failed");
                    FederationError::ProviderUnavailable("its token endpoint failed".into())
                }
            })?;
        let access = token.access_token().secret();
        let user: User = self.get(http, "user", access).await?;
        // Without the `user:email` scope the list is refused: the public address is all there is.
        let addresses: Vec<Address> = match self.get(http, "user/emails", access).await {
            Ok(addresses) => addresses,
            Err(FederationError::ProviderRefused(_)) => Vec::new(),
            Err(other) => return Err(other),
        };
        let chosen = addresses
            .iter()
            .find(|a| a.primary && a.verified)
            .or_else(|| addresses.iter().find(|a| a.verified))
            .or_else(|| addresses.iter().find(|a| a.primary));
        let (email, email_verified) = match chosen {
            Some(address) => (Some(address.email.clone()), address.verified),
            None => (user.email.clone(), false),
        };
        Ok(ProviderClaims {
            subject: user.id.to_string(),
            email,
            email_verified,
            name: user
                .name
                .filter(|n| !n.trim().is_empty())
                .or(Some(user.login)),
        })
    }

    /// `GET {api}/{path}` with the person's token; 401, 403 and 404 mean GitHub refuses (a
    /// revoked grant, a suspended account).
    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        http: &reqwest::Client,
        path: &str,
        access: &str,
    ) -> Result<T, FederationError> {
        let url = format!("{}/{path}", self.api_url.as_str().trim_end_matches('/'));
        let response = http
            .get(url)
            .bearer_auth(access)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header(reqwest::header::USER_AGENT, "idp")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "GitHub API request failed");
                FederationError::ProviderUnavailable("its API cannot be reached".into())
            })?;
        match response.status() {
            status if status.is_success() => response.json().await.map_err(|_| {
                FederationError::ProviderUnavailable(format!(
                    "its answer to {path} could not be read"
                ))
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                Err(FederationError::ProviderRefused(format!(
                    "GET /{path} answered {}",
                    response.status()
                )))
            }
            other => Err(FederationError::ProviderUnavailable(format!(
                "its API answered {other}"
            ))),
        }
    }
}
