-- Seals: tamper evidence across the whole log (see events/src/seal.rs).
--
-- Each seal covers the events committed since the previous seal, in commit-safe order
-- (transaction_id, position), from `from_*` to `to_*` inclusive:
--   events_digest = sha256(previous_hash || entries)
--   entries       = for each sealed event: position (8 bytes big-endian) || chain hash (32 bytes)
--   seal_hash     = sha256 over the seal's fields (format in events/src/seal.rs)
--   signature     = Ed25519 by the key `key_id` over 'idp-seal-v1' || 0x00 || seal_hash
-- Seal 1 links to 32 zero bytes. `entries` is kept so that a verifier can name the exact event
-- that differs; the signed digest, not the entries, is what proves the log untouched.

create table seals (
    seal_number          bigint      not null,
    from_transaction_id  xid8        not null,
    from_position        bigint      not null,
    to_transaction_id    xid8        not null,
    to_position          bigint      not null,
    event_count          bigint      not null,
    events_digest        bytea       not null,
    previous_hash        bytea       not null,
    seal_hash            bytea       not null,
    signature            bytea       not null,
    key_id               text        not null,
    created_at           timestamptz not null,
    entries              bytea       not null,
    constraint seals_pkey primary key (seal_number),
    constraint seals_number_positive check (seal_number >= 1),
    constraint seals_never_empty check (event_count >= 1),
    constraint seals_digest_length check (octet_length(events_digest) = 32),
    constraint seals_previous_hash_length check (octet_length(previous_hash) = 32),
    constraint seals_hash_length check (octet_length(seal_hash) = 32),
    constraint seals_signature_length check (octet_length(signature) = 64)
);

-- Hashes do not compress: store the entries out of line without trying.
alter table seals alter column entries set storage external;

-- Seals are as immutable as the events they cover.
create function seals_refuse_change() returns trigger
language plpgsql as $$
begin
    raise exception 'seals are append-only: % is not allowed', tg_op
        using errcode = 'IE003';
end;
$$;

create trigger seals_immutable
    before update or delete on seals
    for each row execute function seals_refuse_change();

create trigger seals_no_truncate
    before truncate on seals
    for each statement execute function seals_refuse_change();

revoke update, delete, truncate on seals from public;
