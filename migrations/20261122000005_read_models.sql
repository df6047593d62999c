-- Read models of the worker's async projections `users_directory` and `audit_view`. Both are
-- derived from the event log only and can be rebuilt from it at any time
-- (`idp-worker rebuild <name>`); nothing else writes to them.

-- Trigram indexes make `ilike '%part%'` searches on email and name use an index.
create extension if not exists pg_trgm;

-- One row per account, for the administrators' listing and search.
--
-- Status rule: `locked` from `AccountLocked` until `AccountUnlocked`, `PasswordReset`, or a
-- sign-in recorded after `locked_until`; otherwise `active` once the address is verified and
-- `unverified` before. `locked_until` is set exactly while the status is `locked`. A lock that
-- simply ran out leaves the row `locked`: whether a lock is in force is a question of the
-- reading moment, `status = 'locked' and locked_until > now()`.
create table users_directory (
    user_id              uuid        not null,
    email                text        not null,
    display_name         text,
    roles                text[]      not null,
    status               text        not null,
    email_verified_at    timestamptz,
    locked_until         timestamptz,
    lock_count           integer     not null default 0,
    failed_logins        integer     not null default 0,
    created_at           timestamptz not null,
    last_login_at        timestamptz,
    password_changed_at  timestamptz,
    updated_at           timestamptz not null,
    last_position        bigint      not null,
    login_position       bigint      not null default 0,
    constraint users_directory_pkey primary key (user_id),
    constraint users_directory_status_check check (status in ('unverified', 'active', 'locked')),
    constraint users_directory_locked_until_check check ((status = 'locked') = (locked_until is not null))
) with (fillfactor = 80);

-- Search by any part of the email or name (`lower(email) like '%ada%'`).
create index users_directory_email_trgm_idx on users_directory using gin (lower(email) gin_trgm_ops);
create index users_directory_display_name_trgm_idx
    on users_directory using gin (lower(display_name) gin_trgm_ops);
-- Sort by email, with (email, user_id) as the pagination cursor.
create index users_directory_email_idx on users_directory (lower(email), user_id);
-- Filter by role (`roles @> array['admin']`).
create index users_directory_roles_idx on users_directory using gin (roles);
-- Filter by status, newest first, with (created_at, user_id) as the pagination cursor.
create index users_directory_status_created_idx on users_directory (status, created_at, user_id);
-- Sort by creation, with (created_at, user_id) as the pagination cursor.
create index users_directory_created_idx on users_directory (created_at, user_id);

-- The audit trail: one row per event of the log (who did what, when, from where). Payloads are
-- not copied, only a summary written by the projection, so no secret can leak in here.
-- Identifiers compare bytewise (collation "C"): their indexes are kept up to date at rebuild
-- speed, where a linguistic collation costs several times more per insert.
create table audit_view (
    position         bigint      not null,
    event_id         uuid        not null,
    recorded_at      timestamptz not null,
    stream_id        text        collate "C" not null,
    event_type       text        collate "C" not null,
    actor            text        collate "C",
    subject_user_id  uuid,
    client_ip        text,
    user_agent       text,
    request_id       text,
    correlation_id   uuid,
    causation_id     uuid,
    summary          text        not null,
    constraint audit_view_pkey primary key (position)
);

-- What did this principal do (newest first by position)?
create index audit_view_actor_idx on audit_view (actor, position);
-- What happened to this account?
create index audit_view_subject_idx on audit_view (subject_user_id, position)
    where subject_user_id is not null;
-- What happened in this period? Rows arrive in commit order, so time follows the physical
-- order and a block-range index answers ranges at a fraction of a b-tree's upkeep.
create index audit_view_recorded_at_idx on audit_view using brin (recorded_at);
-- Every event of this type.
create index audit_view_event_type_idx on audit_view (event_type, position);
