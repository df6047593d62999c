-- Failed sign-ins per account and per client address over the last hour, which decide when
-- sign-in, registration and the email requests ask for a CAPTCHA (`CAPTCHA_AFTER_FAILURES`).
-- `key` is a blind index (`failures:account:<index of the address>`,
-- `failures:ip:<index of the client address>`), never the value. Rows older than the hour no
-- longer count and are swept. Unlogged, like the rate-limit buckets: after a crash no one is
-- asked for a CAPTCHA until they fail again.
create unlogged table sign_in_failures (
    key              text        not null,
    failures         integer     not null,
    last_failure_at  timestamptz not null,
    constraint sign_in_failures_pkey primary key (key)
);
