//! OpenID Connect: discovery (`/.well-known/openid-configuration` and its JWKS, kept for
//! [`DISCOVERY_TTL`] and fetched again when a token names a key it lacks), the authorization
//! request (code flow, PKCE S256, `state`, `nonce`), the code exchange and the `id_token`'s
//! validation: signature with an algorithm the issuer announces (never `none`, never a shared
//! secret), `iss`, `aud`, `azp`, `exp` and `nonce`, all by the `openidconnect` crate.

use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    TokenResponse,
};
use secrecy::ExposeSecret;
use tokio::sync::RwLock;
use url::Url;

use super::providers::ProviderConfig;
use super::{FederationError, ProviderClaims};

/// How long a discovery document (and its keys) is used before it is fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(600);

/// An OpenID Connect issuer.
#[derive(Debug)]
pub struct OidcProvider {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: secrecy::SecretString,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    discovered: RwLock<Option<(Instant, CoreProviderMetadata)>>,
}

impl OidcProvider {
    /// The issuer of `config`, whose callback is `redirect`.
    ///
    /// # Errors
    /// When the issuer or redirect URL is refused by the crate.
    pub fn new(config: &ProviderConfig, redirect: &Url) -> Result<Self, String> {
        Ok(Self {
            // The issuer as written: discovery appends its path and `iss` must equal it.
            issuer: IssuerUrl::new(config.issuer.as_str().trim_end_matches('/').to_owned())
                .map_err(|e| format!("issuer: {e}"))?,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: config.client_secret.clone(),
            redirect: RedirectUrl::from_url(redirect.clone()),
            scopes: config.scopes.clone(),
            discovered: RwLock::new(None),
        })
    }

    /// The issuer's metadata: the cached copy unless it is older than [`DISCOVERY_TTL`] or
    /// `fresh` asks for a new one.
    async fn metadata(
        &self,
        http: &reqwest::Client,
        fresh: bool,
    ) -> Result<CoreProviderMetadata, FederationError> {
        if !fresh
            && let Some((at, metadata)) = self.discovered.read().await.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(metadata.clone());
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), http)
            .await
            .map_err(|err| {
                tracing::warn!(issuer = %self.issuer.as_str(), error = %err, "OpenID Connect discovery failed");
                FederationError::ProviderUnavailable(format!(
                    "its discovery document could not be read ({err})"
                ))
            })?;
        *self.discovered.write().await = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// The authorization request's URL.
    pub async fn authorize_url(
        &self,
        http: &reqwest::Client,
        state: &str,
        nonce: &str,
        challenge: PkceCodeChallenge,
    ) -> Result<Url, FederationError> {
        let client = self.client(self.metadata(http, false).await?);
        let (state, nonce) = (state.to_owned(), nonce.to_owned());
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(
                self.scopes
                    .iter()
                    .filter(|s| *s != "openid")
                    .map(|s| Scope::new(s.clone())),
            )
            .set_pkce_challenge(challenge)
            .url();
        Ok(url)
    }

    /// Exchanges `code` (with the PKCE `verifier`) and validates the `id_token` it brings
    /// against `nonce`.
    pub async fn exchange(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<ProviderClaims, FederationError> {
        let metadata = self.metadata(http, false).await?;
        let client = self.client(metadata.clone());
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| FederationError::ProviderUnavailable(format!("{e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()))
            .request_async(http)
            .await
            .map_err(|err| match err {
                RequestTokenError::ServerResponse(answer) => {
                    FederationError::ProviderRefused(answer.error().to_string())
                }
                RequestTokenError::Parse(e, _) => FederationError::ProviderUnavailable(format!(
                    "its token answer could not be read ({})",
                    e.path()
                )),
                other => {
                    tracing::warn!(issuer = %self.issuer.as_str(), error = %other, "OpenID Connect token request failed");
                    FederationError::ProviderUnavailable("its token endpoint failed".into())
                }
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| FederationError::TokenRejected("the answer holds no id_token".into()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let verify = |metadata: &CoreProviderMetadata| {
            let algorithms: Vec<CoreJwsSigningAlgorithm> = metadata
                .id_token_signing_alg_values_supported()
                .iter()
                .filter(|alg| asymmetric(alg))
                .cloned()
                .collect();
            let client = self.client(metadata.clone());
            let verifier = client.id_token_verifier().set_allowed_algs(algorithms);
            id_token
                .claims(&verifier, &nonce)
                .map(|claims| ProviderClaims {
                    subject: claims.subject().as_str().to_owned(),
                    email: claims.email().map(|e| e.as_str().to_owned()),
                    email_verified: claims.email_verified().unwrap_or(false),
                    name: claims
                        .name()
                        .and_then(|name| name.get(None))
                        .map(|name| name.as_str().to_owned()),
                })
                .map_err(|err| rejection(&err))
        };
        match verify(&metadata) {
            Ok(claims) => Ok(claims),
            // The issuer may have rotated its keys since discovery: once more with fresh ones.
            Err(Rejection::Signature) => {
                let fresh = self.metadata(http, true).await?;
                verify(&fresh).map_err(Rejection::into_error)
            }
            Err(other) => Err(other.into_error()),
        }
    }
}

/// Whether `alg` is a public-key signature (the only kind idp accepts for `id_token`s).
fn asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    !matches!(
        alg,
        CoreJwsSigningAlgorithm::None
            | CoreJwsSigningAlgorithm::HmacSha256
            | CoreJwsSigningAlgorithm::HmacSha384
            | CoreJwsSigningAlgorithm::HmacSha512
    )
}

/// Why an `id_token` was refused, kept apart from the crate's error type.
enum Rejection {
    /// Its signature did not verify (maybe with keys since rotated).
    Signature,
    /// Anything else, as text.
    Other(String),
}

impl Rejection {
    fn into_error(self) -> FederationError {
        match self {
            Self::Signature => FederationError::TokenRejected(
                "its signature does not verify with the issuer's keys".into(),
            ),
            Self::Other(reason) => FederationError::TokenRejected(reason),
        }
    }
}

/// What a refused `id_token` is refused for.
fn rejection(err: &ClaimsVerificationError) -> Rejection {
    use openidconnect::SignatureVerificationError as S;
    match err {
        ClaimsVerificationError::SignatureVerification(
            S::DisallowedAlg(_) | S::NoSignature | S::UnsupportedAlg(_),
        ) => Rejection::Other(
            "it is not signed with an algorithm the issuer announces (alg none and shared secrets are refused)"
                .into(),
        ),
        ClaimsVerificationError::SignatureVerification(_) => Rejection::Signature,
        ClaimsVerificationError::Expired(_) => Rejection::Other("it has expired".into()),
        ClaimsVerificationError::InvalidAudience(_) => {
            Rejection::Other("it is for another audience".into())
        }
        ClaimsVerificationError::InvalidIssuer(_) => {
            Rejection::Other("it is from another issuer".into())
        }
        ClaimsVerificationError::InvalidNonce(_) => {
            Rejection::Other("its nonce is not this sign-in's".into())
        }
        other => Rejection::Other(other.to_string()),
    }
}
