-- What a person is shown of their sessions (GET /v1/account/sessions), what binds a session to
-- where it started (SESSION_BINDING), and what tells a new device from a known one
-- (NEW_DEVICE_WINDOW_DAYS). Sessions from before these columns show as an unknown device.
alter table sessions
    -- The last sign-in or refresh of the session.
    add column last_used_at timestamptz,
    -- The user agent's family and system, e.g. 'Firefox on Linux' (client_device.rs).
    add column device text,
    -- The client's IPv4 /24 or IPv6 /48, e.g. '203.0.113.0/24'; null when unknown.
    add column network text,
    -- SHA-256 of the user agent, for SESSION_BINDING=network+agent; null without one.
    add column agent_digest bytea,
    -- The NewDeviceSignedIn event whose emailed link may end this session.
    add column notice_id uuid;

-- A person's sessions, newest first, ended ones included (the devices seen lately).
create index sessions_by_user_idx on sessions (user_id, created_at desc);
create unique index sessions_notice_idx on sessions (notice_id) where notice_id is not null;
