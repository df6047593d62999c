//! `/v1/admin/users/*`: account administration (admin role required on every request).
//!
//! The list comes from the worker's `users_directory` read model (eventually consistent); one
//! account is folded from its stream (authoritative), with the directory's extra fields when the
//! worker has caught up. Every change is an event with the administrator as actor.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use idp_events::identity::user;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::paging;
use crate::auth::permissions::{
    ErasePeople, ExportPersonalData, ManageRoles, ManageUsers, Permitted, ReadUsers,
};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, ClientContext};
use crate::identity::{IdentityView, LockOutcome};
use crate::startup::AppState;

/// The routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/users", get(list_users))
        .route("/v1/admin/users/{id}", get(get_user))
        .route("/v1/admin/users/{id}/lock", post(lock))
        .route("/v1/admin/users/{id}/unlock", post(unlock))
        .route("/v1/admin/users/{id}/roles", put(set_roles))
        .route(
            "/v1/admin/users/{id}/sessions/revoke",
            post(revoke_sessions),
        )
        .route("/v1/admin/users/{id}/erase", post(erase_user))
        .route("/v1/admin/users/{id}/export", get(export_user))
        .route(
            "/v1/admin/users/{id}/resend-verification",
            post(resend_verification),
        )
}

/// Why an administrator erases a person.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "erasure request 2026-114"}))]
pub struct EraseUserRequest {
    /// Why (recorded in `PersonErased`; name a request or a ticket, not the person): 1 to 500
    /// characters, not only white space (which is trimmed; U+0085, NEL, is white space too,
    /// though JSON Schema's `\s` leaves it out).
    #[schema(min_length = 1, max_length = 500, pattern = "[^\\s\\u0085]")]
    pub reason: String,
}

/// Longest erasure reason.
const MAX_REASON: usize = 500;

/// Erases a person: records `PersonErased` with the administrator as actor and destroys the
/// person's data key, so every personal field ever written about them reads as `"[erased]"`;
/// their sessions end and their address is free for a new account. Erasing an erased person
/// does nothing more (`erased_now` false).
#[utoipa::path(post, path = "/v1/admin/users/{id}/erase", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    request_body = EraseUserRequest,
    responses((status = 200, description = "Erased (or erased already)", body = crate::identity::ErasureOutcome,
               example = json!({"erased_now": true, "sessions_revoked": 1})),
              (status = 400, description = "The id is not a UUID, or the body is not JSON"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 409, description = "The last administrator who can sign in"),
              (status = 422, description = "The reason is empty or too long")))]
#[tracing::instrument(name = "admin.users.erase", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn erase_user(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ErasePeople>,
    id: ApiPath<Uuid>,
    ApiJson(body): ApiJson<EraseUserRequest>,
) -> Result<Json<crate::identity::ErasureOutcome>, ApiError> {
    let id = account_id(id)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::Unprocessable(format!(
            "reason: must be 1 to {MAX_REASON} characters"
        )));
    }
    let outcome = state
        .identity
        .erase(
            &ctx,
            id,
            crate::identity::Eraser::Administrator {
                actor: &admin.actor(),
                reason,
            },
        )
        .await?;
    Ok(Json(outcome))
}

/// Everything idp holds about a person, as `GET /v1/account/export` gives it to them;
/// recorded as `PersonalDataExported` with the administrator as actor.
#[utoipa::path(get, path = "/v1/admin/users/{id}/export", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, description = "The export (`idp-personal-data-export/v1`)",
               content_type = "application/json", body = Object, example = json!({"format": "idp-personal-data-export/v1", "exported_at": "2026-12-02T10:00:00Z",
                   "person": {"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "email": "ada@example.com", "display_name": "Ada Lovelace",
                              "roles": ["user"], "email_verified": true, "registered_at": "2026-12-01T10:00:00Z"},
                   "users_directory": null, "projects": [],
                   "events": [{"position": 1, "event_id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0e",
                               "stream_id": "user-0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "stream_version": 1,
                               "event_type": "UserRegistered", "recorded_at": "2026-12-01T10:00:00Z",
                               "data": {"email": "ada@example.com", "display_name": "Ada Lovelace", "roles": ["user"]},
                               "metadata": {"actor": "anonymous", "client_ip": "192.0.2.7", "user_agent": "curl/8.5"}}]})),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 410, description = "The person is erased: nothing is left to export")))]
#[tracing::instrument(name = "admin.users.export", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn export_user(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ExportPersonalData>,
    id: ApiPath<Uuid>,
) -> Result<axum::response::Response, ApiError> {
    let id = account_id(id)?;
    let export = state.identity.export(&ctx, &admin.actor(), id).await?;
    Ok(super::account::export_response(export))
}

/// The account id of the path (anything but a UUID is a 400, `id: not a UUID`), named in the
/// request's span.
fn account_id(ApiPath(id): ApiPath<Uuid>) -> Result<Uuid, ApiError> {
    tracing::Span::current().record("user.id", tracing::field::display(id));
    Ok(id)
}

/// Where an account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// The address is not verified yet.
    Unverified,
    /// Verified and not locked.
    Active,
    /// A lock is in force (after failed sign-ins, or by an administrator).
    Locked,
}

/// The order of the list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub enum UserSort {
    /// By email address, A to Z.
    #[serde(rename = "email")]
    Email,
    /// By email address, Z to A.
    #[serde(rename = "-email")]
    EmailDesc,
    /// Oldest first.
    #[serde(rename = "created_at")]
    CreatedAt,
    /// Newest first (the default).
    #[default]
    #[serde(rename = "-created_at")]
    CreatedAtDesc,
}

impl UserSort {
    fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::EmailDesc => "-email",
            Self::CreatedAt => "created_at",
            Self::CreatedAtDesc => "-created_at",
        }
    }

    fn by_email(self) -> bool {
        matches!(self, Self::Email | Self::EmailDesc)
    }

    fn descending(self) -> bool {
        matches!(self, Self::EmailDesc | Self::CreatedAtDesc)
    }
}

/// Search, filters, order and paging of the account list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Part of the email address or display name (case-insensitive), at most 100 characters;
    /// blank: no search.
    #[param(max_length = 100, example = "ada")]
    pub q: Option<String>,
    /// Only accounts with this role.
    #[param(inline)]
    pub role: Option<Role>,
    /// Only accounts in this status (`locked`: a lock is in force now).
    #[param(inline)]
    pub status: Option<UserStatus>,
    /// `email`, `-email`, `created_at` or `-created_at` (default: newest first).
    #[param(inline)]
    pub sort: Option<UserSort>,
    /// Accounts per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (with the same `sort`; opaque: only cursors this
    /// API handed out).
    pub cursor: Option<String>,
}

/// An account as listed.
#[derive(Debug, Serialize, FromRow, ToSchema)]
pub struct UserSummary {
    /// Account id.
    pub id: Uuid,
    /// Email address.
    pub email: String,
    /// Name to show.
    pub display_name: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// `unverified`, `active` or `locked`.
    pub status: UserStatus,
    /// End of the lock in force, if any.
    pub locked_until: Option<DateTime<Utc>>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// The latest sign-in.
    pub last_login_at: Option<DateTime<Utc>>,
    /// When the address was verified.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// The email sort key, as the database compares it.
    #[serde(skip)]
    pub email_key: String,
}

impl sqlx::Type<Postgres> for UserStatus {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Decode<'_, Postgres> for UserStatus {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        match <&str as sqlx::Decode<Postgres>>::decode(value)? {
            "unverified" => Ok(Self::Unverified),
            "active" => Ok(Self::Active),
            "locked" => Ok(Self::Locked),
            other => Err(format!("unknown account status {other:?}").into()),
        }
    }
}

/// A page of accounts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "email": "ada@example.com", "display_name": "Ada Lovelace",
    "roles": ["user"], "status": "active", "locked_until": null, "created_at": "2026-12-01T10:00:00Z",
    "last_login_at": "2026-12-02T08:30:00Z", "email_verified_at": "2026-12-01T10:05:00Z"}], "next_cursor": null}))]
pub struct UserPage {
    /// The accounts.
    pub items: Vec<UserSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The position after an item of a list in `sort` order: its sort key and id.
#[derive(Debug, Clone, PartialEq)]
enum After {
    Email(String, Uuid),
    CreatedAt(DateTime<Utc>, Uuid),
}

fn encode_cursor(sort: UserSort, item: &UserSummary) -> String {
    let key = if sort.by_email() {
        item.email_key.clone()
    } else {
        item.created_at.to_rfc3339()
    };
    URL_SAFE_NO_PAD.encode(format!("{}|{}|{key}", sort.as_str(), item.id))
}

/// The position a cursor names; a cursor of another order, or one this API did not hand out,
/// is a 400.
fn decode_cursor(sort: UserSort, raw: &str) -> Result<After, ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let (order, rest) = text.split_once('|').ok_or_else(bad)?;
    let (id, key) = rest.split_once('|').ok_or_else(bad)?;
    if order != sort.as_str() {
        return Err(ApiError::BadRequest(format!(
            "cursor belongs to sort={order}, not sort={}",
            sort.as_str()
        )));
    }
    let id = id.parse().map_err(|_| bad())?;
    if sort.by_email() {
        Ok(After::Email(key.to_owned(), id))
    } else {
        let at = DateTime::parse_from_rfc3339(key).map_err(|_| bad())?;
        Ok(After::CreatedAt(at.with_timezone(&Utc), id))
    }
}

/// `%part%` for `like`, with the pattern characters of `part` escaped.
fn contains_pattern(part: &str) -> String {
    let mut pattern = String::with_capacity(part.len() + 2);
    pattern.push('%');
    for c in part.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A lock that ran out leaves the directory row `locked` (see the migration): the status and
/// the lock's end are read against the clock here.
const SELECT_SUMMARIES: &str = "
select user_id as id, email, display_name, roles,
       case when status = 'locked' and locked_until <= now()
            then case when email_verified_at is null then 'unverified' else 'active' end
            else status end as status,
       case when locked_until > now() then locked_until end as locked_until,
       created_at, last_login_at, email_verified_at, lower(email) as email_key
  from users_directory
 where true";

/// Lists accounts from the users directory: search, filters, order and cursor paging.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(ListParams),
    responses((status = 200, description = "A page of accounts", body = UserPage),
              (status = 400, description = "Bad search, filter, sort, cursor or limit, or an unknown parameter"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)")))]
#[tracing::instrument(name = "admin.users.list", skip_all)]
pub async fn list_users(
    State(state): State<AppState>,
    Permitted { user: _admin, .. }: Permitted<ReadUsers>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = paging::limit(params.limit)?;
    let sort = params.sort.unwrap_or_default();
    let after = params
        .cursor
        .as_deref()
        .map(|c| decode_cursor(sort, c))
        .transpose()?;
    if params.q.as_deref().is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::BadRequest("q: at most 100 characters".into()));
    }
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());

    let mut query = QueryBuilder::<Postgres>::new(SELECT_SUMMARIES);
    if let Some(q) = q {
        let pattern = contains_pattern(q);
        query
            .push(" and (lower(email) like ")
            .push_bind(pattern.clone())
            .push(" or lower(display_name) like ")
            .push_bind(pattern)
            .push(")");
    }
    if let Some(role) = params.role {
        query
            .push(" and roles @> array[")
            .push_bind(role.as_str())
            .push("]::text[]");
    }
    query.push(match params.status {
        None => "",
        Some(UserStatus::Locked) => " and status = 'locked' and locked_until > now()",
        Some(UserStatus::Active) => {
            " and (status = 'active'
                   or (status = 'locked' and locked_until <= now() and email_verified_at is not null))"
        }
        Some(UserStatus::Unverified) => {
            " and (status = 'unverified'
                   or (status = 'locked' and locked_until <= now() and email_verified_at is null))"
        }
    });
    let (key, cmp, dir) = match (sort.by_email(), sort.descending()) {
        (true, false) => ("lower(email)", ">", "asc"),
        (true, true) => ("lower(email)", "<", "desc"),
        (false, false) => ("created_at", ">", "asc"),
        (false, true) => ("created_at", "<", "desc"),
    };
    match after {
        Some(After::Email(email, id)) => {
            query
                .push(format!(" and ({key}, user_id) {cmp} ("))
                .push_bind(email)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        Some(After::CreatedAt(at, id)) => {
            query
                .push(format!(" and ({key}, user_id) {cmp} ("))
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        None => {}
    }
    query
        .push(format!(" order by {key} {dir}, user_id {dir} limit "))
        .push_bind(limit + 1);
    let mut items: Vec<UserSummary> = query.build_query_as().fetch_all(state.store.pool()).await?;
    let next_cursor = if items.len() > usize::try_from(limit).unwrap_or_default() {
        items.pop();
        items.last().map(|last| encode_cursor(sort, last))
    } else {
        None
    };
    Ok(Json(UserPage { items, next_cursor }))
}

/// One account: folded from its stream, with the directory's fields once the worker has them.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "0190f4c2-8a1e-7c3b-9d2a-5e6f7a8b9c0d", "email": "ada@example.com", "display_name": "Ada Lovelace", "roles": ["user"],
    "status": "active", "email_verified": true, "locked_until": null, "locked_by_admin": false, "lock_count": 0,
    "created_at": "2026-12-01T10:00:00Z", "password_changed_at": null, "active_sessions": 1, "version": 3,
    "email_verified_at": "2026-12-01T10:05:00Z", "last_login_at": "2026-12-02T08:30:00Z", "failed_logins": 0,
    "identities": [{"id": "0193a0c4-5b1e-7c3a-9f1d-2a4b6c8d0e21", "provider": "github", "email": "ada@example.com",
                    "linked_at": "2026-12-01T10:00:00Z", "last_used_at": "2026-12-02T08:30:00Z"}]}))]
pub struct UserDetail {
    /// Account id.
    pub id: Uuid,
    /// Email address.
    pub email: String,
    /// Name to show.
    pub display_name: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// `unverified`, `active` or `locked`, now.
    pub status: UserStatus,
    /// Whether the address is verified.
    pub email_verified: bool,
    /// End of the lock in force, if any (9999-12-31T23:59:59Z: until unlocked).
    pub locked_until: Option<DateTime<Utc>>,
    /// Whether the lock in force is an administrator's (a password reset does not lift it).
    pub locked_by_admin: bool,
    /// How many times the account was locked after failed sign-ins.
    pub lock_count: u32,
    /// When the account was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When the password last changed.
    pub password_changed_at: Option<DateTime<Utc>>,
    /// Sessions neither revoked nor expired.
    pub active_sessions: i64,
    /// The version of the account's stream (`user-<id>`).
    pub version: u64,
    /// From the directory: when the address was verified.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// From the directory: the latest sign-in.
    pub last_login_at: Option<DateTime<Utc>>,
    /// From the directory: wrong passwords since the last sign-in, lock or unlock.
    pub failed_logins: Option<i32>,
    /// Accounts of external identity providers linked to this one, oldest first.
    pub identities: Vec<IdentityView>,
}

/// What the directory adds to an account's stream.
#[derive(Debug, FromRow)]
struct DirectoryFields {
    email_verified_at: Option<DateTime<Utc>>,
    last_login_at: Option<DateTime<Utc>>,
    failed_logins: i32,
}

/// One account, from its event stream.
#[utoipa::path(get, path = "/v1/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, description = "The account", body = UserDetail),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account")))]
#[tracing::instrument(name = "admin.users.get", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn get_user(
    State(state): State<AppState>,
    Permitted { user: _admin, .. }: Permitted<ReadUsers>,
    id: ApiPath<Uuid>,
) -> Result<Json<UserDetail>, ApiError> {
    let id = account_id(id)?;
    let account = state.identity.load_user(id).await?;
    let directory: Option<DirectoryFields> = sqlx::query_as(
        "select email_verified_at, last_login_at, failed_logins
           from users_directory where user_id = $1",
    )
    .bind(id)
    .fetch_optional(state.store.pool())
    .await?;
    let active_sessions = state.identity.active_sessions(id).await?;
    let identities = state.identity.identities_of(&account).await?;
    let now = Utc::now();
    let locked = account.is_locked(now);
    let status = if locked {
        UserStatus::Locked
    } else if account.email_verified {
        UserStatus::Active
    } else {
        UserStatus::Unverified
    };
    Ok(Json(UserDetail {
        id,
        status,
        locked_until: account.locked_until.filter(|_| locked),
        locked_by_admin: account.is_locked_by_admin(now),
        lock_count: account.lock_count,
        email_verified: account.email_verified,
        created_at: account.registered_at,
        password_changed_at: account.password_changed_at,
        active_sessions,
        version: account.version,
        email_verified_at: directory.as_ref().and_then(|d| d.email_verified_at),
        last_login_at: directory.as_ref().and_then(|d| d.last_login_at),
        failed_logins: directory.map(|d| d.failed_logins),
        identities,
        email: account.email,
        display_name: account.display_name,
        roles: account.roles,
    }))
}

/// How long an administrator's lock lasts.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"until": "2099-01-01T00:00:00Z"}))]
pub struct LockRequest {
    /// End of the lock (RFC 3339, in the future); absent: until an administrator unlocks.
    pub until: Option<DateTime<Utc>>,
}

/// Locks an account: no sign-in until the lock ends or an administrator unlocks it, and every
/// session of the account ends at once. A password reset does not lift it.
#[utoipa::path(post, path = "/v1/admin/users/{id}/lock", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    request_body(content((Option<LockRequest> = "application/json", example = json!({"until": "2099-01-01T00:00:00Z"}))),
                 description = "Optional; without a body (or `null`), or without `until`, the lock lasts until an administrator unlocks the account"),
    responses((status = 200, description = "Locked; its sessions ended", body = LockOutcome,
               example = json!({"locked_until": "2099-01-01T00:00:00Z", "sessions_revoked": 2})),
              (status = 400, description = "The id is not a UUID, or the body is not JSON"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 409, description = "The last administrator who can sign in, or the account changed meanwhile"),
              (status = 422, description = "`until` is not in the future")))]
#[tracing::instrument(name = "admin.users.lock", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn lock(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageUsers>,
    id: ApiPath<Uuid>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LockOutcome>, ApiError> {
    let id = account_id(id)?;
    let request: LockRequest = crate::extract::optional_json(&headers, body)?;
    let outcome = state
        .identity
        .lock(&ctx, &admin.actor(), id, request.until)
        .await?;
    Ok(Json(outcome))
}

/// Lifts the lock of an account before it ends.
#[utoipa::path(post, path = "/v1/admin/users/{id}/unlock", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 204, description = "Unlocked (no body)"),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 422, description = "The account is not locked")))]
#[tracing::instrument(name = "admin.unlock", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn unlock(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageUsers>,
    id: ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let id = account_id(id)?;
    state.identity.unlock(&ctx, &admin.actor(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends the person the verification link again (`VerificationRequested`, the administrator
/// as actor), for one whose first email went astray. Not rate-limited like the public request.
#[utoipa::path(post, path = "/v1/admin/users/{id}/resend-verification", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 204, description = "The email is on its way (no body)"),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 409, description = "The address is already verified"),
              (status = 410, description = "The person is erased")))]
#[tracing::instrument(name = "admin.users.resend_verification", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn resend_verification(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageUsers>,
    id: ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let id = account_id(id)?;
    state
        .identity
        .resend_verification_for(&ctx, &admin.actor(), id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The roles an account should have.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"roles": ["user", "admin"]}))]
pub struct RolesRequest {
    /// The complete set; `user` is always kept.
    pub roles: Vec<Role>,
}

/// A role idp knows (`idp_events::identity::user::ROLES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every account.
    User,
    /// Read-only administration: accounts, the log, projects, dead jobs.
    Support,
    /// Plans and their limits.
    BillingAdmin,
    /// All administration.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => user::ROLE_USER,
            Self::Support => user::ROLE_SUPPORT,
            Self::BillingAdmin => user::ROLE_BILLING_ADMIN,
            Self::Admin => user::ROLE_ADMIN,
        }
    }
}

/// The roles an account has now.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"roles": ["admin", "user"]}))]
pub struct RolesOutcome {
    /// Sorted role names.
    pub roles: Vec<String>,
}

/// Replaces the roles of an account. Administration routes check the roles on every request,
/// so a granted or removed role takes effect at once.
#[utoipa::path(put, path = "/v1/admin/users/{id}/roles", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    request_body = RolesRequest,
    responses((status = 200, description = "The roles now", body = RolesOutcome),
              (status = 400, description = "The id is not a UUID, or the body is not JSON"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account"),
              (status = 409, description = "It would leave no administrator who can sign in, or the account changed meanwhile"),
              (status = 422, description = "An unknown role")))]
#[tracing::instrument(name = "admin.users.roles", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn set_roles(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageRoles>,
    id: ApiPath<Uuid>,
    ApiJson(request): ApiJson<RolesRequest>,
) -> Result<Json<RolesOutcome>, ApiError> {
    let id = account_id(id)?;
    let wanted: Vec<String> = request
        .roles
        .iter()
        .map(|role| role.as_str().to_owned())
        .collect();
    let roles = state
        .identity
        .change_roles(&ctx, &admin.actor(), id, &wanted)
        .await?;
    Ok(Json(RolesOutcome { roles }))
}

/// The sessions that were ended.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"sessions_revoked": 2}))]
pub struct SessionsRevoked {
    /// How many sessions this request ended.
    pub sessions_revoked: usize,
}

/// Ends every session of an account: its refresh tokens and access tokens stop working at once.
#[utoipa::path(post, path = "/v1/admin/users/{id}/sessions/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account")),
    responses((status = 200, description = "Its sessions ended", body = SessionsRevoked),
              (status = 400, description = "The id is not a UUID"),
              (status = 403, description = "The caller's roles do not grant this (docs/identity.md, Roles)"),
              (status = 404, description = "No such account")))]
#[tracing::instrument(name = "admin.users.revoke_sessions", skip_all, fields(user.id = tracing::field::Empty))]
pub async fn revoke_sessions(
    State(state): State<AppState>,
    ctx: ClientContext,
    Permitted { user: admin, .. }: Permitted<ManageUsers>,
    id: ApiPath<Uuid>,
) -> Result<Json<SessionsRevoked>, ApiError> {
    let id = account_id(id)?;
    let sessions_revoked = state
        .identity
        .revoke_sessions(&ctx, &admin.actor(), id)
        .await?;
    Ok(Json(SessionsRevoked { sessions_revoked }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn summary(email: &str) -> UserSummary {
        UserSummary {
            id: Uuid::now_v7(),
            email: email.to_owned(),
            display_name: None,
            roles: vec!["user".into()],
            status: UserStatus::Active,
            locked_until: None,
            created_at: DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            last_login_at: None,
            email_verified_at: None,
            email_key: email.to_owned(),
        }
    }

    #[test]
    fn a_cursor_names_the_sort_key_and_id_of_its_order() {
        let item = summary("a|b@example.com");
        let email = encode_cursor(UserSort::Email, &item);
        assert_eq!(
            decode_cursor(UserSort::Email, &email).unwrap(),
            After::Email("a|b@example.com".into(), item.id)
        );
        let created = encode_cursor(UserSort::CreatedAtDesc, &item);
        assert_eq!(
            decode_cursor(UserSort::CreatedAtDesc, &created).unwrap(),
            After::CreatedAt(item.created_at, item.id)
        );
        assert!(decode_cursor(UserSort::CreatedAt, &created).is_err());
        assert!(decode_cursor(UserSort::Email, "not a cursor").is_err());
    }

    #[test]
    fn search_terms_match_literally() {
        assert_eq!(contains_pattern("Ada"), "%ada%");
        assert_eq!(contains_pattern("50%_\\"), "%50\\%\\_\\\\%");
    }
}
