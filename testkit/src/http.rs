//! A client of a running API: its two listeners and the calls tests make most. Every request
//! body and sign-in answer is remembered for the log scan (`idp_ops::test_logs`), so no
//! password or token of a test may reach a log.

/// The addresses of a running API and a client for them (user agent `idp-tests/1.0`).
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `http://127.0.0.1:<port>` of the public listener.
    pub base: String,
    /// `http://127.0.0.1:<port>` of the internal listener: `/metrics`, the detailed
    /// `/health/ready`.
    pub internal: String,
    /// The HTTP client the calls go through.
    pub client: reqwest::Client,
}

impl ApiClient {
    /// A client of the API listening on `port` and `internal_port` of 127.0.0.1.
    pub fn new(port: u16, internal_port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            internal: format!("http://127.0.0.1:{internal_port}"),
            client: reqwest::Client::builder()
                .user_agent("idp-tests/1.0")
                .build()
                .unwrap(),
        }
    }

    /// `path` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `path` on the internal listener.
    pub fn internal_url(&self, path: &str) -> String {
        format!("{}{path}", self.internal)
    }

    /// POSTs `body` as JSON.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        idp_ops::test_logs::remember_secrets_in(&body);
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// GETs `path` with the bearer token `token`.
    pub async fn get_auth(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Signs in (which must succeed); the access token.
    pub async fn token(&self, email: &str, password: &str) -> String {
        let response = self
            .post(
                "/v1/auth/login",
                serde_json::json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(response.status(), 200, "login of {email}");
        let pair: serde_json::Value = response.json().await.unwrap();
        idp_ops::test_logs::remember_secrets_in(&pair);
        pair["access_token"].as_str().unwrap().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_to_the_listener_they_belong_to() {
        let api = ApiClient::new(8080, 9090);
        assert_eq!(api.url("/v1/auth/me"), "http://127.0.0.1:8080/v1/auth/me");
        assert_eq!(
            api.internal_url("/metrics"),
            "http://127.0.0.1:9090/metrics"
        );
    }
}
