-- Read model: how many events of each type the log holds. Kept by the worker's
-- `event_type_counts` projection; rebuildable from the log at any time.
create table event_type_counts (
    event_type        text        not null,
    events            bigint      not null,
    last_position     bigint      not null,
    last_recorded_at  timestamptz not null,
    constraint event_type_counts_pkey primary key (event_type)
);
