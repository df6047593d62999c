-- Each person's data key, wrapped by a key-encryption key (`PERSONAL_DATA_KEYS`): the one table
-- of the log's database that is not append-only. Every personal field in the log is sealed
-- under its person's key; erasing the person destroys the key (the row keeps the subject and
-- when it was erased, so an erased person is never given a new key by mistake), and the fields
-- can then be read by no one. `kek_id` names the ring entry that wrapped the key, so keys can
-- be re-wrapped under a new entry and the old entry retired.
create table subject_keys (
    subject_id  uuid        not null,
    kek_id      text,
    wrapped     bytea,
    created_at  timestamptz not null default now(),
    erased_at   timestamptz,
    constraint subject_keys_pkey primary key (subject_id),
    constraint subject_keys_key_or_erased check (
        (erased_at is null and kek_id is not null and wrapped is not null)
        or (erased_at is not null and kek_id is null and wrapped is null)
    )
);

create index subject_keys_kek_id on subject_keys (kek_id) where kek_id is not null;
