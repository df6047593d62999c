-- Identity state the API needs consistently with its own writes (inline projections, written
-- in the same transaction as the events they follow), and secrets kept out of the log.

-- Password hashes (argon2id PHC strings). Not in the event log: the log is immutable and
-- exported to auditors. Events say when a password changed, this table holds the hash.
create table credentials (
    user_id        uuid        not null,
    password_hash  text        not null,
    updated_at     timestamptz not null default now(),
    constraint credentials_pkey primary key (user_id)
);

-- Consecutive failed logins per account (reset by a success, a lock or an unlock).
create table login_state (
    user_id               uuid        not null,
    consecutive_failures  integer     not null default 0,
    last_failure_at       timestamptz,
    constraint login_state_pkey primary key (user_id)
);

-- Sessions and their refresh tokens (SHA-256 hashes only). A session is a token family: every
-- refresh rotates the token and bumps the generation; an older generation presented again is
-- reuse, and ends the session.
create table sessions (
    session_id     uuid        not null,
    user_id        uuid        not null,
    generation     integer     not null,
    expires_at     timestamptz not null,
    created_at     timestamptz not null default now(),
    revoked_at     timestamptz,
    revoke_reason  text,
    constraint sessions_pkey primary key (session_id)
);
create index sessions_active_by_user_idx on sessions (user_id) where revoked_at is null;

create table refresh_tokens (
    token_hash  bytea   not null,
    session_id  uuid    not null,
    generation  integer not null,
    constraint refresh_tokens_pkey primary key (token_hash),
    constraint refresh_tokens_session_fkey foreign key (session_id) references sessions (session_id)
);
create index refresh_tokens_session_idx on refresh_tokens (session_id);

-- Fixed-window rate-limit counters shared by every API instance. Unlogged: counters need no
-- crash safety (after a crash they start again from zero), and skipping the WAL keeps a
-- counted request from costing a disk flush.
create unlogged table rate_limit_hits (
    bucket        text        not null,
    window_start  timestamptz not null,
    hits          integer     not null,
    constraint rate_limit_hits_pkey primary key (bucket, window_start)
);
