-- email2fa foundation: tenants, their signing secrets and settings, the
-- Services Manager's providers, and the webhook idempotency receipts.
-- Times are fixed-width RFC 3339 text (text order is time order);
-- every row belongs to exactly one tenant.

-- One host platform installation (one shop, one admin console).
create table tenants (
    id text primary key,
    name text not null,
    created_at text not null
);

-- Standard Webhooks signing secrets, sealed with the master key. Several are
-- valid at once during a rotation; expires_at null means "until rotated".
create table tenant_secrets (
    id text primary key,
    tenant_id text not null references tenants (id) on delete cascade,
    secret_sealed blob not null,
    created_at text not null,
    expires_at text
);
create index tenant_secrets_by_tenant on tenant_secrets (tenant_id);

-- The Services Manager's 2FA settings, one row per tenant.
create table tenant_settings (
    tenant_id text primary key references tenants (id) on delete cascade,
    require_admin_2fa integer not null,
    admin_2fa_allowed integer not null,
    customer_2fa_allowed integer not null,
    code_length integer not null,
    code_ttl_seconds integer not null,
    max_attempts integer not null,
    resend_cooldown_seconds integer not null,
    trust_device_days integer not null,
    updated_at text not null
);

-- SMTP service providers. The password is sealed (write-only in the API).
create table service_providers (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    title text not null,
    kind text not null,
    smtp_host text not null,
    smtp_port integer not null,
    smtp_security text not null,
    smtp_username text,
    smtp_password_sealed blob,
    from_address text not null,
    from_name text,
    created_at text not null,
    updated_at text not null,
    primary key (tenant_id, id)
);

-- Secondary Auth providers: which service provider sends the codes.
-- The foreign key keeps a provider in use from being deleted.
create table secondary_auth_providers (
    tenant_id text not null references tenants (id) on delete cascade,
    id text not null,
    title text not null,
    service_provider_id text not null,
    created_at text not null,
    updated_at text not null,
    primary key (tenant_id, id),
    foreign key (tenant_id, service_provider_id) references service_providers (tenant_id, id)
);

-- Idempotency: each webhook-id per tenant with the hash of its body and its
-- first answer (sealed: an answer may carry a trust token), replayed byte for
-- byte. Pruned after EMAIL2FA_WEBHOOK__IDEMPOTENCY_HOURS.
create table webhook_receipts (
    tenant_id text not null references tenants (id) on delete cascade,
    webhook_id text not null,
    body_sha256 blob not null,
    event_type text not null,
    status integer not null,
    answer_sealed blob,
    received_at text not null,
    primary key (tenant_id, webhook_id)
);
create index webhook_receipts_by_time on webhook_receipts (received_at);
