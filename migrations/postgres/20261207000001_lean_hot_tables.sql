-- The hot tables no longer check their tenant with a foreign key.
--
-- Every webhook inserts about five rows into these tables, and each row's
-- foreign key made PostgreSQL look up (and share-lock) the one `tenants`
-- row: 7-20 % of the database's CPU per webhook, measured with the
-- project's own statements (../shared/peer-bench/feasibility). No tenant is
-- ever deleted (there is no command for it), so `on delete cascade` never
-- ran; every writer takes the tenant from a signed, checked webhook or from
-- a row that already carries it. The rare tables (secrets, settings,
-- providers) keep theirs.
alter table webhook_receipts drop constraint if exists webhook_receipts_tenant_id_fkey;
alter table challenges drop constraint if exists challenges_tenant_id_fkey;
alter table deliveries drop constraint if exists deliveries_tenant_id_fkey;
alter table login_decisions drop constraint if exists login_decisions_tenant_id_fkey;
alter table audit_events drop constraint if exists audit_events_tenant_id_fkey;
alter table factors drop constraint if exists factors_tenant_id_fkey;
alter table trusted_devices drop constraint if exists trusted_devices_tenant_id_fkey;
alter table user_security drop constraint if exists user_security_tenant_id_fkey;
alter table dead_letters drop constraint if exists dead_letters_tenant_id_fkey;
