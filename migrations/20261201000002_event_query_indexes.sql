-- Indexes for the audit queries of `GET /v1/admin/events` and its export (api/src/routes/
-- admin_events.rs). Each filter pages in log order, `order by position limit n`, so each index
-- ends in `position`: an equality on its leading column then walks the filter's events in log
-- order and stops after one page. (`event_type` already has such an index, from the event log's
-- migration.)
--
-- Plain `create index` (sqlx runs a migration in one transaction, where `concurrently` is not
-- allowed): on a large existing log the build blocks appends for its duration.

-- One stream exactly, and streams by any prefix (`stream_id ~>=~ prefix`): byte-wise order,
-- whatever the database's collation.
create index events_stream_pattern_idx on events (stream_id text_pattern_ops, position);

-- A stream category, the part before the first `-` (`user-`, `project-`, `job-`...): the
-- prefixes auditors ask for most, walked in log order however many streams they hold.
create index events_stream_category_idx on events (split_part(stream_id, '-', 1), position);

-- Who did it, and which business flow it belongs to (metadata written by every command).
create index events_actor_idx on events ((metadata ->> 'actor'), position)
    where (metadata ->> 'actor') is not null;
create index events_correlation_idx on events ((metadata ->> 'correlation_id'), position)
    where (metadata ->> 'correlation_id') is not null;

-- Time ranges. In an append-only log both `recorded_at` and `position` grow with the table's
-- physical order, so a BRIN index over the two (each summarised per 32 pages) finds the blocks
-- of a time range, and the few blocks where a time range and a position range meet, for a
-- fraction of a btree's size and write cost. The API uses it to bound a time range by positions
-- (see `time_range_positions`). New blocks are summarised as they fill, not at the next vacuum.
create index events_recorded_at_idx on events using brin (recorded_at, position)
    with (pages_per_range = 32, autosummarize = on);
