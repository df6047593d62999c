-- Rate limits become a generic cell rate algorithm (GCRA, a token bucket kept as one time per
-- bucket) instead of fixed windows: a fixed window let a client spend its allowance at the end
-- of one window and again at the start of the next, twice the limit within a second.
-- `tat` is the bucket's theoretical arrival time: each allowed hit moves it `emission` later
-- (`window / max`), and a hit is allowed while that keeps `tat` within `window` of now, so a
-- full bucket allows `max` hits at once and then refills at `max` per `window`. A bucket whose
-- `tat` has passed is full and may be deleted. Unlogged, like the counters before it: after a
-- crash every bucket starts full.
create unlogged table rate_limit_buckets (
    bucket    text        not null,
    tat       timestamptz not null,
    emission  interval    not null,
    "window"  interval    not null,
    constraint rate_limit_buckets_pkey primary key (bucket)
);

drop table rate_limit_hits;
