-- Who holds the admin role: an inline projection of the user streams' `UserRegistered` and
-- `RolesChanged` events, written by the API in the same transaction as each event that grants
-- or removes the role. The last-administrator guard counts administrators from here (folding
-- only their few streams to see which are locked) instead of folding every account; it runs
-- under a transaction-level advisory lock, so two administrators demoting or locking each
-- other at the same time cannot both succeed.
create table admin_accounts (
    user_id     uuid        not null,
    granted_at  timestamptz not null,
    constraint admin_accounts_pkey primary key (user_id)
);

-- Backfill from the log: an account is an administrator if the latest of its role-setting
-- events lists `admin`.
insert into admin_accounts (user_id, granted_at)
select substr(latest.stream_id, 6)::uuid, latest.recorded_at
  from (select distinct on (stream_id) stream_id, data, recorded_at
          from events
         where event_type in ('UserRegistered', 'RolesChanged')
           and stream_id ~ '^user-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
         order by stream_id, stream_version desc) as latest
 where latest.data -> 'roles' ? 'admin';
