-- The statements of one login.started webhook for an enrolled customer, as
-- the service runs them (tenant keys outside the transaction, then one
-- transaction). :u is the user, :r a random id for the new rows.
\set u random(1, 1000000000000)
\set r random(1, 1000000000000000)
select s.secret_sealed from email2fa.tenants t left join email2fa.tenant_secrets s on s.tenant_id = t.id and (s.expires_at is null or s.expires_at > now()) where t.id = 'bench';
begin;
insert into email2fa.webhook_receipts (tenant_id, webhook_id, body_sha256, event_type, status, answer_sealed, received_at) values ('bench', 'msg_' || :r, sha256((:r)::text::bytea), 'login.started', 0, null, now()) on conflict (tenant_id, webhook_id) do nothing;
select require_admin_2fa, admin_2fa_allowed, customer_2fa_allowed, code_length, code_ttl_seconds, max_attempts, resend_cooldown_seconds, trust_device_days, updated_at from email2fa.tenant_settings where tenant_id = 'bench';
select tenant_id, id, user_id, role, email, secondary_auth_provider_id, created_at from email2fa.factors where tenant_id = 'bench' and user_id = 'u' || :u order by created_at, id;
select tenant_id, id, title, service_provider_id, created_at, updated_at from email2fa.secondary_auth_providers where tenant_id = 'bench' and ('s1' is null or id = 's1') order by created_at, id limit 1;
update email2fa.challenges set status = 'superseded', closed_at = now(), updated_at = now(), code_hash = null where tenant_id = 'bench' and user_id = 'u' || :u and purpose = 'login' and status = 'pending';
select pg_advisory_xact_lock(hashtextextended('user:bench:u' || :u, 0));
select pg_advisory_xact_lock(hashtextextended('rcpt:bench:u' || :u || '@bench.example', 0));
select consecutive_failures, last_failure_at from email2fa.user_security where tenant_id = 'bench' and user_id = 'u' || :u;
select count(*), min(created_at) from email2fa.deliveries where tenant_id = 'bench' and user_id = 'u' || :u and created_at > now() - interval '900 seconds' and kind in ('enrollment_code', 'login_code');
select count(*), min(created_at) from email2fa.deliveries where tenant_id = 'bench' and recipient = 'u' || :u || '@bench.example' and created_at > now() - interval '3600 seconds' and kind in ('enrollment_code', 'login_code');
insert into email2fa.deliveries (id, tenant_id, kind, user_id, recipient, user_name, locale, role, challenge_id, secondary_auth_provider_id, status, attempts, max_attempts, not_after, next_attempt_at, resent_from, created_at, updated_at) values ('d' || :r, 'bench', 'login_code', 'u' || :u, 'u' || :u || '@bench.example', null, null, 'customer', 'c' || :r, 's1', 'queued', 0, 6, now() + interval '600 seconds', now(), null, now(), now());
insert into email2fa.challenges (tenant_id, id, purpose, user_id, role, email, user_name, locale, secondary_auth_provider_id, status, attempts, max_attempts, code_length, code_ttl_seconds, code_hash, code_expires_at, code_delivery_id, current_delivery_id, resend_after, factor_id, created_at, updated_at, closed_at) values ('bench', 'c' || :r, 'login', 'u' || :u, 'customer', 'u' || :u || '@bench.example', null, null, 's1', 'pending', 0, 5, 6, 600, null, null, null, 'd' || :r, now() + interval '30 seconds', null, now(), now(), null);
insert into email2fa.audit_events (tenant_id, id, user_id, event, detail, created_at) values ('bench', 'a' || :r, 'u' || :u, 'code_sent', '{"challenge_id": "01KBENCH0000000000000000000", "delivery_id": "01KBENCH0000000000000000000", "purpose": "login"}', now());
insert into email2fa.login_decisions (tenant_id, id, user_id, role, decision, reason, challenge_id, ip, user_agent, created_at) values ('bench', 'l' || :r, 'u' || :u, 'customer', 'challenge', 'code_sent', 'c' || :r, '203.0.113.7', 'email2fa-bench', now());
update email2fa.webhook_receipts set status = 200, answer_sealed = decode(repeat('ab', 200), 'hex') where tenant_id = 'bench' and webhook_id = 'msg_' || :r;
end;
