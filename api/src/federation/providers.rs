//! The identity providers idp brokers, from `AUTH_PROVIDERS` (a JSON list) or
//! `AUTH_PROVIDERS_FILE` (a file holding one), checked at start: a mistake stops the API with
//! the provider and field it concerns, never a sign-in later.

use std::net::IpAddr;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// The kind of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenID Connect issuer (Google, Microsoft Entra ID, Okta, Keycloak, ...), found by
    /// discovery.
    Oidc,
    /// GitHub or GitHub Enterprise Server (OAuth 2.0 with its user and email endpoints).
    Github,
}

/// One entry of `AUTH_PROVIDERS`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    kind: ProviderKind,
    #[serde(default)]
    issuer: Option<String>,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    allowed_domains: Vec<String>,
    #[serde(default)]
    trust_email_verified: bool,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    /// GitHub only: the REST API's base.
    #[serde(default)]
    api_url: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// A provider, checked.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Its id: in its routes (`/v1/auth/oidc/{id}/...`) and in the events of its links.
    pub id: String,
    /// Its kind.
    pub kind: ProviderKind,
    /// The issuer (OpenID Connect), or GitHub's web base (`https://github.com`, or a GitHub
    /// Enterprise Server's).
    pub issuer: Url,
    /// GitHub only: the REST API (`https://api.github.com`, or `{issuer}/api/v3`).
    pub api_url: Option<Url>,
    /// The OAuth client id idp is registered with.
    pub client_id: String,
    /// Its secret (never logged: `Debug` redacts it).
    pub client_secret: SecretString,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// Lowercased email domains allowed to sign in (empty: any).
    pub allowed_domains: Vec<String>,
    /// Whether a verified address from this provider may link to an existing account.
    pub trust_email_verified: bool,
    /// The name shown on sign-in buttons.
    pub display_name: String,
    /// A disabled provider is not listed and signs nobody in; its links stay.
    pub enabled: bool,
}

/// Why `AUTH_PROVIDERS` was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProvidersError(String);

/// Parses and checks the providers of `json` (`source` names where it came from).
///
/// # Errors
/// Malformed JSON, an unknown field, a duplicate or malformed id, a missing client id or
/// secret, an issuer that is not `https://` (or `http://` on a loopback address).
pub fn parse(source: &str, json: &str) -> Result<Vec<ProviderConfig>, ProvidersError> {
    let entries: Vec<Entry> = serde_json::from_str(json).map_err(|e| {
        ProvidersError(format!(
            "{source}: not a JSON list of providers ({e}); see docs/identity.md"
        ))
    })?;
    let mut providers: Vec<ProviderConfig> = Vec::with_capacity(entries.len());
    for entry in entries {
        let provider = check(entry).map_err(|e| ProvidersError(format!("{source}: {e}")))?;
        if providers.iter().any(|p| p.id == provider.id) {
            return Err(ProvidersError(format!(
                "{source}: provider id {:?} is listed twice",
                provider.id
            )));
        }
        providers.push(provider);
    }
    Ok(providers)
}

fn check(entry: Entry) -> Result<ProviderConfig, String> {
    let id = entry.id;
    let valid_id = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if !valid_id {
        return Err(format!(
            "provider id {id:?}: use 1 to 32 lowercase letters, digits and '-' (it is part of URLs)"
        ));
    }
    let field = |name: &str, reason: &str| format!("provider {id:?}: {name}: {reason}");
    if entry.client_id.trim().is_empty() {
        return Err(field("client_id", "is empty"));
    }
    if entry.client_secret.is_empty() {
        return Err(field("client_secret", "is empty"));
    }
    let issuer = match (entry.kind, entry.issuer.as_deref()) {
        (ProviderKind::Oidc, None) => return Err(field("issuer", "is required for kind oidc")),
        (ProviderKind::Github, None) => "https://github.com",
        (_, Some(issuer)) => issuer,
    };
    let issuer = endpoint(issuer).map_err(|reason| field("issuer", &reason))?;
    let api_url = match entry.kind {
        ProviderKind::Oidc => {
            if entry.api_url.is_some() {
                return Err(field("api_url", "is for kind github only"));
            }
            None
        }
        ProviderKind::Github => Some(match entry.api_url.as_deref() {
            Some(api) => endpoint(api).map_err(|reason| field("api_url", &reason))?,
            None if issuer.host_str() == Some("github.com") => {
                endpoint("https://api.github.com").map_err(|reason| field("api_url", &reason))?
            }
            None => endpoint(&format!("{}/api/v3", issuer.as_str().trim_end_matches('/')))
                .map_err(|reason| field("api_url", &reason))?,
        }),
    };
    let mut scopes = entry.scopes.unwrap_or_else(|| match entry.kind {
        ProviderKind::Oidc => vec!["openid".into(), "email".into(), "profile".into()],
        ProviderKind::Github => vec!["read:user".into(), "user:email".into()],
    });
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err(field("scopes", "a scope is empty or holds a space"));
    }
    if entry.kind == ProviderKind::Oidc && !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let allowed_domains: Vec<String> = entry
        .allowed_domains
        .iter()
        .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
        .collect();
    if allowed_domains
        .iter()
        .any(|d| d.is_empty() || d.contains('@'))
    {
        return Err(field("allowed_domains", "a domain is empty or malformed"));
    }
    Ok(ProviderConfig {
        display_name: entry.display_name.unwrap_or_else(|| id.clone()),
        id,
        kind: entry.kind,
        issuer,
        api_url,
        client_id: entry.client_id,
        client_secret: SecretString::from(entry.client_secret),
        scopes,
        allowed_domains,
        trust_email_verified: entry.trust_email_verified,
        enabled: entry.enabled,
    })
}

/// An endpoint's URL: `https://`, or `http://` on a loopback address only (a local test
/// provider); no query, fragment or credentials.
fn endpoint(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL ({e})"))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{raw:?} must have no query, fragment or credentials"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{raw:?} is plain http: use https (http is allowed on a loopback address only)"
        )),
        other => Err(format!("{raw:?}: scheme {other} is not http(s)")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn one(json: &str) -> Result<ProviderConfig, String> {
        parse("AUTH_PROVIDERS", json)
            .map(|mut list| list.remove(0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_oidc_issuer_needs_only_its_url_and_credentials() {
        let provider = one(
            r#"[{"id": "google", "kind": "oidc", "issuer": "https://accounts.google.com",
                 "client_id": "c", "client_secret": "s"}]"#,
        )
        .unwrap();
        assert_eq!(provider.scopes, ["openid", "email", "profile"]);
        assert_eq!(provider.display_name, "google");
        assert!(provider.enabled && !provider.trust_email_verified);
        assert_eq!(provider.client_secret.expose_secret(), "s");
        assert!(!format!("{provider:?}").contains("\"s\""));
    }

    #[test]
    fn github_defaults_to_github_com_and_enterprise_to_api_v3() {
        let github =
            one(r#"[{"id": "github", "kind": "github", "client_id": "c", "client_secret": "s"}]"#)
                .unwrap();
        assert_eq!(github.issuer.as_str(), "https://github.com/");
        assert_eq!(
            github.api_url.as_ref().map(Url::as_str),
            Some("https://api.github.com/")
        );
        let ghe = one(
            r#"[{"id": "ghe", "kind": "github", "issuer": "https://git.example.com",
                 "client_id": "c", "client_secret": "s"}]"#,
        )
        .unwrap();
        assert_eq!(
            ghe.api_url.as_ref().map(Url::as_str),
            Some("https://git.example.com/api/v3")
        );
        assert_eq!(ghe.scopes, ["read:user", "user:email"]);
    }

    #[test]
    fn plain_http_is_for_loopback_only() {
        for (issuer, ok) in [
            ("http://127.0.0.1:9000", true),
            ("http://localhost:9000", true),
            ("http://[::1]:9000", true),
            ("http://idp.example.com", false),
            ("http://10.0.0.1", false),
            ("ftp://example.com", false),
            ("https://example.com/?x=1", false),
        ] {
            let json = format!(
                r#"[{{"id": "p", "kind": "oidc", "issuer": "{issuer}", "client_id": "c", "client_secret": "s"}}]"#
            );
            assert_eq!(one(&json).is_ok(), ok, "{issuer}: {:?}", one(&json).err());
        }
    }

    #[test]
    fn mistakes_name_the_provider_and_field() {
        for (json, needle) in [
            (r#"{"id": "x"}"#, "not a JSON list"),
            (
                r#"[{"id": "Bad Id", "kind": "oidc", "issuer": "https://a", "client_id": "c", "client_secret": "s"}]"#,
                "provider id \"Bad Id\"",
            ),
            (
                r#"[{"id": "a", "kind": "oidc", "client_id": "c", "client_secret": "s"}]"#,
                "issuer: is required",
            ),
            (
                r#"[{"id": "a", "kind": "oidc", "issuer": "https://a", "client_id": "", "client_secret": "s"}]"#,
                "client_id: is empty",
            ),
            (
                r#"[{"id": "a", "kind": "oidc", "issuer": "https://a", "client_id": "c", "client_secret": "s", "scope": []}]"#,
                "unknown field `scope`",
            ),
            (
                r#"[{"id": "a", "kind": "saml", "issuer": "https://a", "client_id": "c", "client_secret": "s"}]"#,
                "unknown variant",
            ),
            (
                r#"[{"id": "a", "kind": "github", "client_id": "c", "client_secret": "s"},
                    {"id": "a", "kind": "github", "client_id": "c", "client_secret": "s"}]"#,
                "listed twice",
            ),
        ] {
            let err = parse("AUTH_PROVIDERS", json).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(needle)),
                "{json}: {err:?}"
            );
        }
    }

    #[test]
    fn openid_is_always_asked_and_domains_are_lowercased() {
        let provider = one(
            r#"[{"id": "okta", "kind": "oidc", "issuer": "https://corp.okta.com", "client_id": "c",
                 "client_secret": "s", "scopes": ["email"], "allowed_domains": ["@Example.COM"]}]"#,
        )
        .unwrap();
        assert_eq!(provider.scopes, ["openid", "email"]);
        assert_eq!(provider.allowed_domains, ["example.com"]);
    }
}
