-- Second factors (TOTP), beside the log like password hashes: the events say only that a
-- second factor was enrolled, enabled, used or removed.
--
-- `secret` is the TOTP secret sealed (XChaCha20-Poly1305) under the person's data key in
-- `subject_keys`, bound to the person and to this purpose: erasing the person destroys that
-- key and with it every copy of the secret, and the row goes too. `enabled_at` is null while
-- enrolment waits for its first code. `last_step` is the 30-second step of the last code
-- accepted: a code of that step or an earlier one is refused, so no code works twice.
-- `failures` counts wrong codes since the last right one (five lock the second factor).
create table second_factors (
    user_id     uuid        not null,
    secret      bytea       not null,
    created_at  timestamptz not null default now(),
    enabled_at  timestamptz,
    last_step   bigint      not null default 0,
    failures    integer     not null default 0,
    constraint second_factors_pkey primary key (user_id)
);

-- Recovery codes, only as SHA-256 digests (each code holds 80 random bits, so a digest cannot
-- be reversed by guessing). A new set replaces the old one; a used code keeps its row with
-- `used_at`, so the count of what is left is exact.
create table recovery_codes (
    user_id     uuid        not null,
    code_digest bytea       not null,
    created_at  timestamptz not null default now(),
    used_at     timestamptz,
    constraint recovery_codes_pkey primary key (user_id, code_digest)
);

-- The challenges of sign-ins whose password was right and that wait for a second factor: a
-- random token given to the caller, stored as its SHA-256 digest, valid for a few minutes and
-- for one completed sign-in.
create table mfa_challenges (
    challenge_digest bytea       not null,
    challenge_id     uuid        not null,
    user_id          uuid        not null,
    expires_at       timestamptz not null,
    used_at          timestamptz,
    constraint mfa_challenges_pkey primary key (challenge_digest)
);

create index mfa_challenges_by_user_idx on mfa_challenges (user_id);
