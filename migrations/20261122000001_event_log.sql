-- The event log: one append-only table for every domain event of idp.
--
-- `position` is the global order of insertion, but positions become visible in commit order,
-- which may differ. Readers therefore page by (transaction_id, position) and only read rows
-- whose transaction is older than every transaction still running (see events/src/store.rs).

create table events (
    position        bigint generated always as identity,
    transaction_id  xid8        not null default pg_current_xact_id(),
    event_id        uuid        not null,
    stream_id       text        not null,
    stream_version  bigint      not null,
    event_type      text        not null,
    schema_version  integer     not null,
    data            jsonb       not null,
    metadata        jsonb       not null,
    recorded_at     timestamptz not null,
    hash            bytea       not null,
    constraint events_pkey primary key (position),
    constraint events_event_id_key unique (event_id),
    constraint events_stream_version_key unique (stream_id, stream_version),
    constraint events_stream_version_positive check (stream_version >= 1),
    constraint events_schema_version_positive check (schema_version >= 1),
    constraint events_hash_length check (octet_length(hash) = 32)
);

-- Commit-safe reading walks this index.
create index events_commit_order_idx on events (transaction_id, position);
-- Audit queries by type and time.
create index events_event_type_idx on events (event_type, position);

-- The log is immutable: no UPDATE, DELETE or TRUNCATE, whoever asks.
create function events_refuse_change() returns trigger
language plpgsql as $$
begin
    raise exception 'the event log is append-only: % is not allowed', tg_op
        using errcode = 'IE003';
end;
$$;

create trigger events_immutable
    before update or delete on events
    for each row execute function events_refuse_change();

create trigger events_no_truncate
    before truncate on events
    for each statement execute function events_refuse_change();

revoke update, delete, truncate on events from public;

-- Uniqueness reservations (one account per email, ...): a row claimed in the same transaction
-- as the event that claims it, deleted by the event that gives it up.
create table reservations (
    scope       text        not null,
    value       text        not null,
    stream_id   text        not null,
    claimed_at  timestamptz not null default now(),
    constraint reservations_pkey primary key (scope, value)
);

-- Append events to one stream in one statement: version check, reservations and hash chain.
-- `p_expected` is the stream's current version the caller decided on (0 = the stream must not
-- exist) or null for "any". `p_canonical` holds each event's canonical body (computed by the
-- application, see events/src/chain.rs); the chain link adds the previous hash and the event's
-- place in the stream.
--
-- The wake-up notification is sent by the application after the append, not here: NOTIFY
-- serialises the commits of all notifying transactions (a cluster-wide lock held through the
-- WAL flush), which would make concurrent appends as slow as one writer.
--
-- Errors use their own SQLSTATEs so the application can map them to typed errors:
--   IE001 version conflict (detail: the actual version), IE002 reservation taken (detail: scope).
create function idp_append(
    p_stream_id       text,
    p_expected        bigint,
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_data            jsonb[],
    p_metadata        jsonb,
    p_recorded_at     timestamptz,
    p_canonical       bytea[],
    p_claim_scopes    text[],
    p_claim_values    text[],
    p_release_scopes  text[],
    p_release_values  text[]
) returns table (out_position bigint, out_stream_version bigint, out_transaction_id bigint)
language plpgsql as $$
declare
    v_version   bigint;
    v_base      bigint;
    v_hash      bytea;
    v_hashes    bytea[] := '{}';
    v_body      bytea;
    v_stream    bytea := int4send(octet_length(p_stream_id)) || convert_to(p_stream_id, 'UTF8');
    v_claimed   integer;
    v_txid      bigint := pg_current_xact_id()::text::bigint;
    i           integer;
begin
    -- Serialise writers of one stream; other streams are not affected.
    perform pg_advisory_xact_lock(1768974881, hashtext(p_stream_id));

    select e.stream_version, e.hash into v_version, v_hash
      from events e
     where e.stream_id = p_stream_id
     order by e.stream_version desc
     limit 1;
    v_version := coalesce(v_version, 0);

    if p_expected is not null and p_expected <> v_version then
        raise exception 'stream % is at version %, expected %', p_stream_id, v_version, p_expected
            using errcode = 'IE001', detail = v_version::text;
    end if;

    for i in 1 .. coalesce(array_length(p_claim_scopes, 1), 0) loop
        insert into reservations (scope, value, stream_id)
        values (p_claim_scopes[i], p_claim_values[i], p_stream_id)
        on conflict (scope, value) do nothing;
        get diagnostics v_claimed = row_count;
        if v_claimed = 0 and not exists (
            select 1 from reservations r
             where r.scope = p_claim_scopes[i] and r.value = p_claim_values[i]
               and r.stream_id = p_stream_id
        ) then
            raise exception 'reservation %/% is already taken', p_claim_scopes[i], p_claim_values[i]
                using errcode = 'IE002', detail = p_claim_scopes[i];
        end if;
    end loop;

    for i in 1 .. coalesce(array_length(p_release_scopes, 1), 0) loop
        delete from reservations r
         where r.scope = p_release_scopes[i] and r.value = p_release_values[i]
           and r.stream_id = p_stream_id;
    end loop;

    -- Chain link: sha256(previous hash in this stream (empty for the first event)
    --   || version as 8 bytes big-endian || stream id length as 4 bytes || stream id (UTF-8)
    --   || canonical body of the event). events/src/chain.rs recomputes it.
    v_base := v_version;
    foreach v_body in array p_canonical loop
        v_version := v_version + 1;
        v_hash := sha256(coalesce(v_hash, ''::bytea) || int8send(v_version) || v_stream || v_body);
        v_hashes := v_hashes || v_hash;
    end loop;

    return query
    with inserted as (
        insert into events (event_id, stream_id, stream_version, event_type, schema_version,
                            data, metadata, recorded_at, hash)
        select t.id, p_stream_id, v_base + t.ord, t.typ, t.sv, t.d, p_metadata, p_recorded_at, t.h
          from unnest(p_event_ids, p_event_types, p_schema_versions, p_data, v_hashes)
               with ordinality as t(id, typ, sv, d, h, ord)
         order by t.ord
        returning events.position, events.stream_version
    )
    select inserted.position, inserted.stream_version, v_txid from inserted order by inserted.position;
end;
$$;

-- Subscriptions: named cursors over the log, advanced in the same transaction as the
-- read-model writes they cover.
create table subscription_checkpoints (
    name            text        not null,
    transaction_id  xid8        not null default '0'::xid8,
    position        bigint      not null default 0,
    updated_at      timestamptz not null default now(),
    constraint subscription_checkpoints_pkey primary key (name)
);

-- Events a subscription could not handle after its retries; it moved on past them.
create table failed_events (
    subscription    text        not null,
    position        bigint      not null,
    event_id        uuid        not null,
    event_type      text        not null,
    attempts        integer     not null,
    error           text        not null,
    failed_at       timestamptz not null default now(),
    constraint failed_events_pkey primary key (subscription, position)
);
