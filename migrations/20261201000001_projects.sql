-- Projects as the API lists them: an inline projection, written in the same transaction as
-- each event of a project's stream (by the API and by the worker), so a read after a write
-- that returned always sees it. `state` is the folded project (steps, attempts, errors).
create table projects (
    project_id  uuid        primary key,
    owner_id    uuid        not null,
    name        text        collate "C" not null,
    template    text        collate "C" not null,
    status      text        collate "C" not null,
    version     bigint      not null,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    state       jsonb       not null
);
-- A user's projects, newest first (the list's order and cursor).
create index projects_owner_idx on projects (owner_id, created_at desc, project_id desc);
-- Everyone's projects, for administrators.
create index projects_created_idx on projects (created_at desc, project_id desc);

-- Idempotency keys of requests that create (POST /v1/projects): the first request with a key
-- stores its response; a repeat with the same body gets it again, with another body a 422.
-- Concurrent repeats wait on the primary key for the first to commit.
create table idempotency_keys (
    owner_id      uuid        not null,
    key           text        not null,
    request_hash  bytea       not null,
    status        smallint    not null,
    response      jsonb       not null,
    created_at    timestamptz not null default now(),
    constraint idempotency_keys_pkey primary key (owner_id, key)
);
create index idempotency_keys_created_idx on idempotency_keys (created_at);
