//! The links our emails point to, built in one place from `PUBLIC_BASE_URL` so that every email
//! agrees with the web app's routes.

use std::fmt;

use url::{Url, form_urlencoded};

/// Builds links under the public base URL of the web app, e.g. `https://id.example.com` or
/// `https://example.com/id/` (a trailing slash makes no difference).
#[derive(Clone, PartialEq, Eq)]
pub struct Links {
    /// The base URL without a trailing slash.
    base: String,
}

/// `PUBLIC_BASE_URL` is not an absolute http(s) URL without query or fragment.
#[derive(Debug, thiserror::Error)]
#[error("PUBLIC_BASE_URL {reason}")]
pub struct LinksError {
    reason: String,
}

impl Links {
    /// Checks `public_base_url`: absolute `http` or `https`, with a host, no query, no fragment.
    pub fn new(public_base_url: &str) -> Result<Self, LinksError> {
        let invalid = |reason: String| LinksError { reason };
        let url = Url::parse(public_base_url.trim())
            .map_err(|e| invalid(format!("is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "must be http or https, not {}",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("has no host".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or a fragment".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not contain credentials".into()));
        }
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// `{base}/verify-email?token=<token>`
    pub fn verification(&self, token: &str) -> String {
        self.with_token("verify-email", token)
    }

    /// `{base}/reset-password?token=<token>`
    pub fn password_reset(&self, token: &str) -> String {
        self.with_token("reset-password", token)
    }

    /// `{base}/revoke-session?token=<token>`, which ends the session a new-device email is about
    pub fn revoke_session(&self, token: &str) -> String {
        self.with_token("revoke-session", token)
    }

    /// `{base}/sign-in`
    pub fn sign_in(&self) -> String {
        format!("{}/sign-in", self.base)
    }

    /// `{base}/forgot-password`, where a user asks for a reset link (emails that are not answers
    /// to a reset request carry no token).
    pub fn forgot_password(&self) -> String {
        format!("{}/forgot-password", self.base)
    }

    fn with_token(&self, path: &str, token: &str) -> String {
        let token: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
        format!("{}/{path}?token={token}", self.base)
    }
}

impl fmt::Debug for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Links").field(&self.base).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_have_one_slash_whether_or_not_the_base_ends_with_one() {
        for base in ["https://id.example.com", "https://id.example.com/"] {
            let links = Links::new(base).unwrap();
            assert_eq!(
                links.verification("abc"),
                "https://id.example.com/verify-email?token=abc"
            );
            assert_eq!(
                links.password_reset("abc"),
                "https://id.example.com/reset-password?token=abc"
            );
            assert_eq!(links.sign_in(), "https://id.example.com/sign-in");
            assert_eq!(
                links.forgot_password(),
                "https://id.example.com/forgot-password"
            );
        }
    }

    #[test]
    fn a_base_with_a_path_keeps_it() {
        let links = Links::new("http://127.0.0.1:3000/id/").unwrap();
        assert_eq!(links.sign_in(), "http://127.0.0.1:3000/id/sign-in");
    }

    #[test]
    fn url_safe_tokens_are_unchanged_and_anything_else_is_percent_encoded() {
        let links = Links::new("https://id.example.com").unwrap();
        assert_eq!(
            links.verification("aB3-_x"),
            "https://id.example.com/verify-email?token=aB3-_x"
        );
        assert_eq!(
            links.password_reset("a+b/c=&d e"),
            "https://id.example.com/reset-password?token=a%2Bb%2Fc%3D%26d+e"
        );
    }

    #[test]
    fn bases_that_cannot_carry_our_paths_are_rejected() {
        for base in [
            "id.example.com",
            "ftp://id.example.com",
            "https://id.example.com/?x=1",
            "https://id.example.com/#top",
            "https://user:pw@id.example.com",
        ] {
            let error = Links::new(base).unwrap_err().to_string();
            assert!(error.starts_with("PUBLIC_BASE_URL "), "{base}: {error}");
        }
    }
}
