-- Registrations made again while an account was still unverified (`RegistrationRepeated`):
-- each keeps its own password hash here, beside the log like `credentials`, until its link
-- confirms it (its hash then becomes the account's) or the account is verified by another link.
create table pending_registrations (
    registration_id  uuid        not null,
    user_id          uuid        not null,
    password_hash    text        not null,
    created_at       timestamptz not null default now(),
    constraint pending_registrations_pkey primary key (registration_id)
);

create index pending_registrations_user_id on pending_registrations (user_id);
