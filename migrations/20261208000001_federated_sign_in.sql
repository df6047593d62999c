-- Federated sign-in (OpenID Connect issuers and GitHub), kept inline with the user events that
-- decide it (`ExternalIdentityLinked`, `ExternalIdentityUnlinked`).

-- The provider accounts linked to idp accounts. The subject (the provider's id of the person)
-- is personal data: the log holds it sealed, this table only its blind index (HMAC under
-- EMAIL_INDEX_KEYS, domain `external-identity`), which is all a sign-in needs to find the
-- account. Erasure deletes the rows.
create table external_identities (
    identity_id uuid primary key,
    user_id uuid not null,
    provider text not null,
    subject_index text not null,
    linked_at timestamptz not null default now(),
    last_used_at timestamptz,
    constraint external_identities_subject_key unique (provider, subject_index)
);

create index external_identities_by_user_idx on external_identities (user_id);

-- The `state` of every federated sign-in that reached its callback (SHA-256), so that a flow
-- completes once. Rows older than their flow's end go with each new one.
create table federated_flows_used (
    state_digest bytea primary key,
    expires_at timestamptz not null
);

-- One-time codes (SHA-256) that hand a finished federated sign-in to the front end named by
-- `return_to`, which exchanges one at `POST /v1/auth/oidc/exchange` within 60 seconds.
create table federated_login_codes (
    code_digest bytea primary key,
    user_id uuid not null,
    provider text not null,
    session_expires_at timestamptz not null,
    expires_at timestamptz not null
);

create index federated_login_codes_by_user_idx on federated_login_codes (user_id);

-- A federated sign-in that waits for its second factor keeps its provider and the end
-- `PROVIDER_SESSION_MAX_AGE` gives its session.
alter table mfa_challenges
    add column provider text,
    add column session_expires_at timestamptz;
