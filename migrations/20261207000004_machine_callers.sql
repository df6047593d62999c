-- Machine callers and plans: service accounts, API keys, each account's plan and spend cap,
-- what each project costs, and leases of request budget for the per-plan rate limits.

-- Service accounts as the API lists and checks them: an inline projection of the
-- `service-account-<uuid>` streams, written in the same transaction as each of their events.
create table service_accounts (
    account_id   uuid        not null,
    name         text        collate "C" not null,
    description  text,
    roles        text[]      not null,
    created_at   timestamptz not null,
    disabled_at  timestamptz,
    deleted_at   timestamptz,
    constraint service_accounts_pkey primary key (account_id)
);
-- A name belongs to one service account until it is deleted.
create unique index service_accounts_name_key on service_accounts (name) where deleted_at is null;

-- API keys: an inline projection of the `api-key-<uuid>` streams. The key itself is never
-- stored: `key_hash` is its SHA-256, looked up on every request made with it. `name` is the
-- holder's label for the key (the log has it sealed under the owner's data key); erasing a
-- person deletes their rows.
create table api_keys (
    key_id           uuid        not null,
    owner_id         uuid        not null,
    service_account  boolean     not null,
    key_hash         bytea       not null,
    prefix           text        not null,
    name             text        not null,
    scopes           text[]      not null,
    created_at       timestamptz not null,
    expires_at       timestamptz,
    revoked_at       timestamptz,
    -- Updated at most once a minute per key and API instance.
    last_used_at     timestamptz,
    constraint api_keys_pkey primary key (key_id),
    constraint api_keys_key_hash_key unique (key_hash)
);
create index api_keys_owner_idx on api_keys (owner_id, created_at desc);

-- Each account's plan and own spend cap: an inline projection of the `plan-<uuid>` streams.
-- An account without a row is on the default plan (`DEFAULT_PLAN`) with no cap of its own.
create table account_plans (
    account_id       uuid        not null,
    plan             text        collate "C" not null,
    spend_cap_cents  bigint,
    changed_at       timestamptz not null,
    constraint account_plans_pkey primary key (account_id)
);

-- What each project costs per month, as its template declared when it was requested; live
-- projects count against their owner's spend cap. Projects from before templates declared a
-- cost cost nothing.
alter table projects add column monthly_cost_cents bigint not null default 0;

-- Takes up to `want` hits from a GCRA bucket of `rate_limit_buckets` at once and says how many
-- it got (0 when the bucket is empty) and the bucket's new theoretical arrival time. An API
-- instance spends such a lease in memory, so a request costs a database round trip only once
-- per lease, and every instance draws from the same bucket.
create function rate_limit_lease(
    p_bucket text,
    p_want integer,
    p_emission interval,
    p_window interval,
    out granted integer,
    out next_tat timestamptz
) language plpgsql as $$
declare
    v_now timestamptz := now();
    v_tat timestamptz;
begin
    insert into rate_limit_buckets (bucket, tat, emission, "window")
    values (p_bucket, v_now, p_emission, p_window)
    on conflict (bucket) do nothing;
    select greatest(b.tat, v_now) into v_tat
      from rate_limit_buckets b
     where b.bucket = p_bucket
       for update;
    -- A hit fits while it keeps the arrival time within one window of now.
    granted := greatest(0, least(p_want::bigint,
        floor(extract(epoch from (p_window - (v_tat - v_now)))
              / extract(epoch from p_emission))::bigint))::integer;
    next_tat := v_tat + granted * p_emission;
    update rate_limit_buckets b
       set tat = next_tat, emission = p_emission, "window" = p_window
     where b.bucket = p_bucket;
end
$$;
