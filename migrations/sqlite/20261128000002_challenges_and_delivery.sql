-- Enrollment, login challenges, trust, the delivery engine's tables, and the
-- records hosts read: factors, trusted devices, challenges (never a code),
-- deliveries, dead letters, login decisions and audit events.

-- A user's email second factor ("Secondary Authentication Entry").
create table factors (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    user_id text not null,
    role text not null,
    email text not null,
    secondary_auth_provider_id text not null,
    created_at text not null,
    primary key (tenant_id, id)
);
create index factors_by_user on factors (tenant_id, user_id);

-- One code journey: enrollment ("Add" → "Verify") or login (code screen).
-- The current code exists only as a keyed hash, written by the worker that
-- sends it (code_delivery_id); current_delivery_id is the newest send asked
-- for, and a send for any other delivery is superseded and never goes out.
create table challenges (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    purpose text not null,
    user_id text not null,
    role text not null,
    email text not null,
    user_name text,
    locale text,
    secondary_auth_provider_id text not null,
    status text not null,
    attempts integer not null,
    max_attempts integer not null,
    code_length integer not null,
    code_ttl_seconds integer not null,
    code_hash blob,
    code_expires_at text,
    code_delivery_id text,
    current_delivery_id text,
    resend_after text not null,
    factor_id text,
    created_at text not null,
    updated_at text not null,
    closed_at text,
    primary key (tenant_id, id)
);
create index challenges_by_user on challenges (tenant_id, user_id, status);

-- Per-user security state: consecutive failed tries across challenges.
create table user_security (
    tenant_id text not null references tenants (id) on delete cascade,
    user_id text not null,
    consecutive_failures integer not null,
    last_failure_at text,
    primary key (tenant_id, user_id)
);

-- "Trust this device": the token exists only as a keyed hash.
create table trusted_devices (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    user_id text not null,
    token_hash blob not null unique,
    label text,
    created_at text not null,
    last_used_at text,
    expires_at text not null,
    revoked_at text,
    primary key (tenant_id, id)
);
create index trusted_devices_by_user on trusted_devices (tenant_id, user_id);

-- Every login.started decision with its reason.
create table login_decisions (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    user_id text not null,
    role text not null,
    decision text not null,
    reason text not null,
    challenge_id text,
    ip text,
    user_agent text,
    created_at text not null,
    primary key (tenant_id, id)
);
create index login_decisions_by_user on login_decisions (tenant_id, user_id, created_at);

-- Security-relevant events, never with a code or a token.
create table audit_events (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    user_id text,
    event text not null,
    detail text not null,
    created_at text not null,
    primary key (tenant_id, id)
);
create index audit_events_by_user on audit_events (tenant_id, user_id, created_at);

-- One row per email (the delivery engine's single truth for queue health).
-- status: queued → sending → sent | retrying | dead | expired | discarded | resent
create table deliveries (
    id text primary key,
    tenant_id text not null references tenants (id) on delete cascade,
    kind text not null,
    user_id text not null,
    recipient text not null,
    user_name text,
    locale text,
    role text not null,
    challenge_id text,
    secondary_auth_provider_id text not null,
    status text not null,
    attempts integer not null,
    max_attempts integer not null,
    last_error text,
    smtp_reply text,
    message_id text,
    not_after text,
    next_attempt_at text not null,
    lease_until text,
    resent_from text,
    created_at text not null,
    updated_at text not null,
    sent_at text
);
create index deliveries_by_status on deliveries (status, next_attempt_at);
create index deliveries_by_user on deliveries (tenant_id, user_id, created_at);
create index deliveries_by_recipient on deliveries (tenant_id, recipient, created_at);

-- Deliveries that gave up, with why; resolved by a resend or a discard.
create table dead_letters (
    id text primary key,
    tenant_id text not null references tenants (id) on delete cascade,
    delivery_id text not null,
    kind text not null,
    recipient text not null,
    attempts integer not null,
    last_error text,
    reason text not null,
    dead_at text not null,
    resolved_at text,
    resolution text
);
create index dead_letters_by_time on dead_letters (dead_at);
