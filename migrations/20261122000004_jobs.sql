-- Jobs: circuit breakers shared by every worker process, and the dead letters an administrator
-- can send back. Both are kept in the same transaction as the events that change them.

create table circuit_breakers (
    name text not null,
    state text not null default 'closed',
    -- consecutive failures while closed
    failures integer not null default 0,
    -- open: when a trial call is allowed; half_open: when the trial call's lease ends
    retry_at timestamptz,
    last_error text,
    updated_at timestamptz not null default now(),
    constraint circuit_breakers_pkey primary key (name),
    constraint circuit_breakers_state_check check (state in ('closed', 'open', 'half_open'))
);

create table dead_jobs (
    job_id uuid not null,
    queue text not null,
    kind text not null,
    reason text not null,
    attempts integer not null,
    last_error text,
    payload jsonb not null,
    cause_id uuid,
    dead_lettered_at timestamptz not null,
    constraint dead_jobs_pkey primary key (job_id)
);

create index dead_jobs_dead_lettered_at_idx on dead_jobs (dead_lettered_at, job_id);
