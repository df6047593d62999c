//! Building and running the API: the same code path for `main` and for tests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use idp_events::EventStore;
use idp_events::project::Catalogue;
use idp_ops::health::{BrokerProbe, Health};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::LatencyUnit;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::access::Access;
use crate::auth::captcha::Verifier;
use crate::auth::keys::KeyRing;
use crate::auth::password::{HashParams, Hasher};
use crate::auth::request_limits::{RateStatus, RequestLimiter};
use crate::auth::tokens::{TokenConfig, Tokens};
use crate::federation::providers::{self, ProviderConfig};
use crate::federation::{Federation, FederationSettings};
use crate::identity::{Captcha, IdentityKeys};
use idp_events::identity::email::Email;
use idp_events::keys::SecretKeys;
use secrecy::ExposeSecret as _;

use crate::config::Config;
use crate::error::{REQUEST_ID, problem};
use crate::extract::{CallerSlot, CorrelationId};
use crate::identity::Identity;
use crate::projects::live::LogWatch;
use crate::routes;

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of the handlers: one allocation, so that the clone each request's extractors
/// make is one reference count, not one per service.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What the handlers share ([`AppState`]).
#[derive(Debug)]
pub struct Services {
    /// The event log.
    pub store: EventStore,
    /// Sign-in, sessions and tokens.
    pub identity: Identity,
    /// Service accounts, API keys, plans and their limits.
    pub access: Access,
    /// Federated sign-in (`AUTH_PROVIDERS`).
    pub federation: Federation,
    /// The project templates.
    pub catalogue: Arc<Catalogue>,
    /// Wake-ups for the project event streams (one LISTEN connection per process).
    pub log_watch: LogWatch,
    /// The key ring of project database passwords (`PROJECT_DATABASE_KEYS`).
    pub database_keys: Arc<SecretKeys>,
    /// Where the keys that verify seals are (`SEAL_KEYS_DIR`), read at each verification.
    pub seal_keys_dir: Arc<std::path::Path>,
    /// What people may consent to (`CONSENT_PURPOSES`).
    pub consent_purposes: Arc<idp_events::identity::consent::Purposes>,
}

/// A built API, bound to its address, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    internal_listener: TcpListener,
    internal_router: Router,
    pool: PgPool,
    log_watch: LogWatch,
    identity: Identity,
}

impl Application {
    /// Connects to the database (waiting for it up to 30 s), applies migrations and binds.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        idp_ops::metrics::install("idp-api");
        // Configuration first: a broken template file stops start-up before any connection.
        let catalogue = Arc::new(config.common.catalogue()?);
        let pool = idp_ops::database::connect(&config.common).await?;
        idp_ops::metrics::watch_pool(pool.clone(), "idp-api");
        idp_events::migrations::run(&pool)
            .await
            .context("while applying database migrations")?;
        let broker = Arc::new(BrokerProbe::new(config.common.amqp_url.clone()));
        let listener = TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("while binding API_ADDR {}", config.api_addr))?;
        let internal_listener = TcpListener::bind(config.api_internal_addr)
            .await
            .with_context(|| {
                format!(
                    "while binding API_INTERNAL_ADDR {}",
                    config.api_internal_addr
                )
            })?;
        let store = config
            .common
            .event_store(pool.clone())
            .await
            .context("while setting up the keys of personal data (PERSONAL_DATA_KEYS)")?;
        let identity = build_identity(config, store.clone()).await?;
        let database_keys = Arc::new(config.common.project_database_ring()?);
        let log_watch = LogWatch::new(pool.clone(), config.sse_max_streams_per_user as usize);
        let access = Access::new(
            store.clone(),
            config.plans.plans.clone(),
            &config.plans.default_plan,
            RequestLimiter::new(pool.clone(), config.plans.rate_limit_requests),
        )?;
        let federation = Federation::new(federation_settings(config)?, pool.clone())
            .context("while setting up the identity providers (AUTH_PROVIDERS)")?;
        let state = AppState(Arc::new(Services {
            store,
            identity,
            access,
            federation,
            catalogue,
            log_watch: log_watch.clone(),
            database_keys,
            seal_keys_dir: Arc::from(config.common.seal_keys_dir.as_path()),
            consent_purposes: Arc::new(config.identity.consent_purposes.clone()),
        }));
        let identity_handle = state.identity.clone();
        let health = Health::new(pool.clone(), broker).with_optional_broker();
        let internal_router = idp_ops::health::router(health.clone());
        let router = app(state, health, config)?;
        Ok(Self {
            listener,
            router,
            internal_listener,
            internal_router,
            pool,
            log_watch,
            identity: identity_handle,
        })
    }

    /// The port bound (useful when `API_ADDR` asked for port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The port of the internal listener (`/metrics`, detailed readiness).
    pub fn internal_port(&self) -> u16 {
        self.internal_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` is cancelled, then closes the port (later connections are
    /// refused) and lets in-flight requests finish, including those of connections accepted
    /// just before; idle keep-alive connections are closed.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            addr = %self.listener.local_addr()?,
            internal_addr = %self.internal_listener.local_addr()?,
            "idp-api listening"
        );
        let log_watch = self.log_watch;
        let internal =
            idp_ops::shutdown::GracefulListener::new(self.internal_listener, shutdown.clone())
                .context("while reading the API's internal listening address")?;
        let internal_stopped = internal.stopped();
        let internal = tokio::spawn(
            axum::serve(internal, self.internal_router.into_make_service())
                .with_graceful_shutdown(internal_stopped)
                .into_future(),
        );
        let listener = idp_ops::shutdown::GracefulListener::new(self.listener, shutdown)
            .context("while reading the API's listening address")?;
        let stopped = listener.stopped();
        // Also what makes `ConnectInfo<SocketAddr>` available with a listener of our own.
        let listener = axum::serve::ListenerExt::tap_io(listener, |connection| {
            let _ = connection.set_nodelay(true);
        });
        axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            stopped.await;
            // Event streams only end when their project settles; end them now, or the
            // graceful shutdown would wait for them (clients resume with Last-Event-ID).
            log_watch.shutdown();
        })
        .await
        .context("while serving HTTP")?;
        internal
            .await
            .context("while serving the internal listener")?
            .context("while serving the internal listener")?;
        // Email requests answered before they were carried out.
        self.identity.finish_background_work().await;
        self.pool.close().await;
        tracing::info!("idp-api stopped");
        Ok(())
    }
}

/// The router with its middleware.
pub fn app(state: AppState, health: Health, config: &Config) -> anyhow::Result<Router> {
    let timeout = Duration::from_secs(config.request_timeout_secs);
    let mut router = routes::router(state, health)
        .layer(middleware::from_fn(scope_request_id))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        // Bounds the time until the response's head, not the body: an event stream
        // (`GET /v1/projects/{id}/events`) sends its head at once and then streams for as long as
        // it needs, so the timeout does not cut it (a test holds a stream open past it). Do not
        // add a response-body timeout or deadline here; it would cut those streams.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        // Outside the layers that answer on their own (timeout, body limit, method not allowed),
        // so their bare answers become problem documents too.
        .layer(middleware::from_fn(problem_for_bare_answers))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    if config.hsts {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ));
    }
    let origins: Vec<HeaderValue> = config
        .cors_allowed_origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            HeaderValue::from_str(o)
                .with_context(|| format!("CORS_ALLOWED_ORIGINS: bad origin {o:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    if !origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    HeaderName::from_static("last-event-id"),
                ])
                .expose_headers([REQUEST_ID_HEADER, header::RETRY_AFTER, header::LOCATION]),
        );
    }
    Ok(router
        // Inside the trace layer and outside everything else, so timeouts and refused bodies
        // count too; a `Router` layer, so the matched route is known.
        .layer(middleware::from_fn(idp_ops::metrics::track_http))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(http_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                ),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .layer(axum::Extension(Arc::new(config.trusted_proxies.clone())))
        .layer(middleware::from_fn(identify_request)))
}

/// Outermost: drops a client's `X-Request-Id` unless it is a short plain token (the next layer
/// then makes one), and gives the request a correlation id of the server's own.
async fn identify_request(mut request: Request, next: Next) -> Response {
    let keep = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .is_some_and(|id| crate::extract::acceptable_request_id(id.as_bytes()));
    if !keep {
        request.headers_mut().remove(&REQUEST_ID_HEADER);
    }
    request
        .extensions_mut()
        .insert(CorrelationId(uuid::Uuid::now_v7()));
    let caller = CallerSlot::default();
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    if let Some(rate) = caller.0.get().and_then(|note| note.rate) {
        rate_limit_headers(response.headers_mut(), rate);
    }
    response
}

/// The `RateLimit-*` headers (IETF draft names) and their `X-RateLimit-*` equivalents, with the
/// same values: the limit per minute, what is left, and seconds until the bucket is full again.
fn rate_limit_headers(headers: &mut axum::http::HeaderMap, rate: RateStatus) {
    let values = [
        (
            "ratelimit-limit",
            "x-ratelimit-limit",
            u64::from(rate.limit),
        ),
        (
            "ratelimit-remaining",
            "x-ratelimit-remaining",
            u64::from(rate.remaining),
        ),
        ("ratelimit-reset", "x-ratelimit-reset", rate.reset_secs),
    ];
    for (name, legacy, value) in values {
        let value = axum::http::HeaderValue::from(value);
        headers.insert(name, value.clone());
        headers.insert(legacy, value);
    }
}

/// The span every request's log lines carry: method, path (never the query, which may hold
/// search terms), request id, the correlation id the request's events get (the server's, see
/// `identify_request`), and the caller's user id once a token names it (see `AuthUser`).
fn http_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        correlation_id = tracing::field::Empty,
        user.id = tracing::field::Empty,
    );
    if let Some(CorrelationId(correlation)) = request.extensions().get::<CorrelationId>() {
        span.record("correlation_id", tracing::field::display(correlation));
    }
    span
}

/// The providers of `AUTH_PROVIDERS` or `AUTH_PROVIDERS_FILE`, the origins a `return_to` may
/// name, and the key that signs flows.
fn federation_settings(config: &Config) -> anyhow::Result<FederationSettings> {
    let f = &config.federation;
    let providers: Vec<ProviderConfig> = match (&f.auth_providers, &f.auth_providers_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("set AUTH_PROVIDERS or AUTH_PROVIDERS_FILE, not both")
        }
        (Some(json), None) => providers::parse("AUTH_PROVIDERS", json.expose_secret())?,
        (None, Some(path)) => {
            let json = std::fs::read_to_string(path)
                .with_context(|| format!("while reading AUTH_PROVIDERS_FILE {}", path.display()))?;
            providers::parse(&format!("AUTH_PROVIDERS_FILE {}", path.display()), &json)?
        }
        (None, None) => Vec::new(),
    };
    let base = &f.public_base_url;
    if !matches!(base.scheme(), "http" | "https") || base.query().is_some() {
        anyhow::bail!("PUBLIC_BASE_URL must be an http(s) URL without a query, not {base}");
    }
    let mut return_origins = vec![base.origin().ascii_serialization()];
    return_origins.extend(
        config
            .cors_allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty()),
    );
    let flow_keys = config.common.key_ring(
        "FEDERATION_STATE_KEYS",
        f.federation_state_keys.as_ref(),
        "federation-state",
    )?;
    Ok(FederationSettings {
        providers,
        public_base_url: base.clone(),
        return_origins,
        session_max_age: Duration::from_secs(f.provider_session_max_age),
        flow_keys,
    })
}

/// Builds the identity service: signing keys, the one-time token key, the hasher, and the first
/// administrator.
async fn build_identity(config: &Config, store: EventStore) -> anyhow::Result<Identity> {
    let id = &config.identity;
    let keys = KeyRing::load_dir(&id.jwt_keys_dir, id.jwt_generate_keys).with_context(|| {
        format!(
            "while loading signing keys from JWT_KEYS_DIR {}",
            id.jwt_keys_dir.display()
        )
    })?;
    let tokens = Tokens::new(
        Arc::new(keys),
        TokenConfig {
            issuer: id.jwt_issuer.clone(),
            audience: id.jwt_audience.clone(),
            access_ttl: Duration::from_secs(id.access_token_ttl_secs),
        },
    );
    let params = HashParams {
        memory_kib: id.argon2_memory_kib,
        iterations: id.argon2_iterations,
        parallelism: id.argon2_parallelism,
    }
    .validated()
    .map_err(|e| anyhow::anyhow!("invalid ARGON2_* setting: {e}"))?;
    let keys = IdentityKeys {
        email_tokens: config.common.email_token_ring()?,
        address_digest: config.common.key_ring(
            "ADDRESS_DIGEST_KEYS",
            id.address_digest_keys.as_ref(),
            "address-digest",
        )?,
        email_index: config.common.key_ring(
            "EMAIL_INDEX_KEYS",
            id.email_index_keys.as_ref(),
            "email-index",
        )?,
    };
    let hasher = Hasher::new(params).with_max_queue(id.argon2_max_queue as usize);
    let mut identity = Identity::new(store, hasher, tokens, keys, id);
    match (&id.captcha_verify_url, &id.captcha_secret) {
        (Some(url), Some(secret)) => {
            let verifier = Verifier::new(url.clone(), secret.clone())
                .context("while setting up the CAPTCHA verifier")?;
            identity = identity.with_captcha(Captcha::new(verifier, id.captcha_after_failures));
        }
        (None, None) => {}
        (Some(_), None) => anyhow::bail!("CAPTCHA_VERIFY_URL is set but CAPTCHA_SECRET is not"),
        (None, Some(_)) => anyhow::bail!("CAPTCHA_SECRET is set but CAPTCHA_VERIFY_URL is not"),
    }
    let reindexed = identity
        .index_clear_reservations()
        .await
        .map_err(|e| anyhow::anyhow!("while indexing the address reservations: {e}"))?;
    if reindexed > 0 {
        tracing::info!(
            reservations = reindexed,
            "address reservations written before blind indexes now hold the index"
        );
    }
    match (&id.admin_email, &id.admin_password) {
        (Some(email), Some(password)) => {
            let email = Email::parse(email).map_err(|e| anyhow::anyhow!("ADMIN_EMAIL: {e}"))?;
            identity
                .ensure_admin(&email, password.expose_secret())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!("administrator account ensured");
        }
        (Some(_), None) | (None, Some(_)) => {
            anyhow::bail!("ADMIN_EMAIL and ADMIN_PASSWORD must be set together")
        }
        (None, None) => {}
    }
    Ok(identity)
}

/// Makes the request id available to error responses built anywhere in the handler.
async fn scope_request_id(request: Request, next: Next) -> Response {
    let id = request_id_of(&request);
    REQUEST_ID.scope(id, next.run(request)).await
}

fn request_id_of(request: &Request) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Answers that layers give with no body or a plain-text one (the timeout's 503, the body
/// limit's 413, the router's 405) become problem documents like every other error; headers such as `Allow`
/// are kept.
async fn problem_for_bare_answers(request: Request, next: Next) -> Response {
    let id = request_id_of(&request);
    let response = next.run(request).await;
    // Ours are JSON; theirs are empty or plain text.
    let bare = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|t| t.as_bytes().starts_with(b"text/plain"));
    if !bare {
        return response;
    }
    let (slug, detail) = match response.status() {
        StatusCode::SERVICE_UNAVAILABLE => ("timeout", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "the request body is too large"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this route does not take this method (see the Allow header)",
        ),
        _ => return response,
    };
    let status = response.status();
    let mut problem = REQUEST_ID
        .scope(id, async { problem(status, slug, Some(detail.into())) })
        .await;
    if let Some(allow) = response.headers().get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}
