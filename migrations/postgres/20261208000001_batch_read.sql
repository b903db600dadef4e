-- One round trip for everything a batch of hot webhooks decides on
-- (src/store/batch/read.rs, `BATCH_READ`): it locks the addresses the
-- batch may send to, then reads receipts, challenges, factors, security
-- streaks, the code sends of the batch's users and addresses within their
-- windows, and the trusted devices of the trust tokens presented.
--
-- It is a function, not one statement, for the snapshot: PostgreSQL takes
-- a statement's snapshot when the statement starts, so sends counted in
-- the statement that takes the addresses' locks could miss a send that a
-- batch holding one of them committed meanwhile. Each statement of a
-- volatile PL/pgSQL function takes a new snapshot; the counts here are read
-- after the locks are held. Before this function a batch spent two more
-- round trips on the same work: one to lock the addresses, one to count.
--
-- The addresses locked are every address a webhook of the batch can send
-- to: those given (`addresses`: an enrollment's, as the limit compares
-- them), every factor's of the users named, and the address of every
-- challenge named. The caller checks that each address it sends to got a
-- `recipient_sends` row (locked and counted here) and decides the batch
-- again otherwise. Addresses are compared with ASCII letters lowercased
-- (`lower(... collate "C")`, as `email2fa_workers::address::limit_key`);
-- their locks are of class 799014914 (0x2FA00002), after the users' locks
-- (class 0x2FA00001, taken with the batch's `begin`), in ascending key order,
-- so that concurrent batches cannot deadlock.
--
-- The rows are the union of the tables read, one `kind` per table, every
-- column a table lacks null. The column lists follow src/store/challenges.rs
-- (`COLUMNS`) and src/store/factors.rs (`FACTOR_COLUMNS`, `DEVICE_COLUMNS`):
-- a migration that adds a column there replaces this function too.
create function batch_read(
    receipts jsonb,
    named jsonb,
    starting jsonb,
    tokens jsonb,
    addresses jsonb,
    user_since timestamptz,
    recipient_since timestamptz
) returns table (
    tenant_id text,
    id text,
    purpose text,
    user_id text,
    role text,
    email text,
    user_name text,
    locale text,
    secondary_auth_provider_id text,
    status text,
    attempts integer,
    max_attempts integer,
    code_length integer,
    code_ttl_seconds integer,
    code_hash bytea,
    code_expires_at timestamptz,
    code_delivery_id text,
    current_delivery_id text,
    resend_after timestamptz,
    factor_id text,
    created_at timestamptz,
    updated_at timestamptz,
    closed_at timestamptz,
    previous_code_hash bytea,
    previous_code_expires_at timestamptz,
    token_hash bytea,
    label text,
    last_used_at timestamptz,
    expires_at timestamptz,
    revoked_at timestamptz,
    consecutive_failures integer,
    last_failure_at timestamptz,
    webhook_id text,
    body_sha256 bytea,
    receipt_status integer,
    answer_sealed bytea,
    sends bigint,
    oldest timestamptz,
    kind text
) language plpgsql volatile as $fn$
#variable_conflict use_column
declare
    locked_tenants text[];
    locked_addresses text[];
begin
    select coalesce(array_agg(a.tenant_id order by a.tenant_id, a.id), '{}'),
           coalesce(array_agg(a.id order by a.tenant_id, a.id), '{}')
      into locked_tenants, locked_addresses
      from (select x.tenant_id, x.id from jsonb_to_recordset(addresses) as x (tenant_id text, id text)
            union
            select f.tenant_id, lower(f.email collate "C")
              from jsonb_to_recordset(starting) as s (tenant_id text, id text)
              cross join factors f
             where f.tenant_id = s.tenant_id and f.user_id = s.id
            union
            select c.tenant_id, lower(c.email collate "C")
              from jsonb_to_recordset(named) as n (tenant_id text, id text)
              cross join challenges c
             where c.tenant_id = n.tenant_id and c.id = n.id) a;
    perform count(pg_advisory_xact_lock(799014914, l.k))
       from (select distinct hashtext(a.tenant_id || chr(10) || a.id) as k
               from unnest(locked_tenants, locked_addresses) as a (tenant_id, id)
              order by 1) l;
    return query
        with n as (select * from jsonb_to_recordset(named) as n0 (tenant_id text, id text)),
             s as (select * from jsonb_to_recordset(starting) as s0 (tenant_id text, id text)),
             ch as (select c.tenant_id, c.id, c.purpose, c.user_id, c.role, c.email, c.user_name, c.locale, c.secondary_auth_provider_id, c.status, c.attempts, c.max_attempts, c.code_length, c.code_ttl_seconds, c.code_hash, c.code_expires_at, c.code_delivery_id, c.current_delivery_id, c.resend_after, c.factor_id, c.created_at, c.updated_at, c.closed_at, c.previous_code_hash, c.previous_code_expires_at
                      from n cross join challenges c
                     where c.tenant_id = n.tenant_id and c.id = n.id
                    union
                    select c.tenant_id, c.id, c.purpose, c.user_id, c.role, c.email, c.user_name, c.locale, c.secondary_auth_provider_id, c.status, c.attempts, c.max_attempts, c.code_length, c.code_ttl_seconds, c.code_hash, c.code_expires_at, c.code_delivery_id, c.current_delivery_id, c.resend_after, c.factor_id, c.created_at, c.updated_at, c.closed_at, c.previous_code_hash, c.previous_code_expires_at
                      from s cross join challenges c
                     where c.tenant_id = s.tenant_id and c.user_id = s.id and c.status = 'pending'),
             u as (select s.tenant_id, s.id from s
                   union
                   select c.tenant_id, c.user_id from n cross join ch c
                    where c.tenant_id = n.tenant_id and c.id = n.id)
           select r.tenant_id, null::text, null::text, null::text, null::text, null::text,
                  null::text, null::text, null::text, null::text, null::integer, null::integer,
                  null::integer, null::integer, null::bytea, null::timestamptz, null::text,
                  null::text, null::timestamptz, null::text, null::timestamptz,
                  null::timestamptz, null::timestamptz, null::bytea, null::timestamptz,
                  null::bytea, null::text, null::timestamptz, null::timestamptz,
                  null::timestamptz, null::integer, null::timestamptz, r.webhook_id,
                  r.body_sha256, r.status, r.answer_sealed, null::bigint, null::timestamptz,
                  'receipt'
           from jsonb_to_recordset(receipts) as x (tenant_id text, id text)
             cross join webhook_receipts r
           where r.tenant_id = x.tenant_id and r.webhook_id = x.id
           union all
           select c.tenant_id, c.id, c.purpose, c.user_id, c.role, c.email, c.user_name,
                  c.locale, c.secondary_auth_provider_id, c.status, c.attempts, c.max_attempts,
                  c.code_length, c.code_ttl_seconds, c.code_hash, c.code_expires_at,
                  c.code_delivery_id, c.current_delivery_id, c.resend_after, c.factor_id,
                  c.created_at, c.updated_at, c.closed_at, c.previous_code_hash,
                  c.previous_code_expires_at, null::bytea, null::text, null::timestamptz,
                  null::timestamptz, null::timestamptz, null::integer, null::timestamptz,
                  null::text, null::bytea, null::integer, null::bytea, null::bigint,
                  null::timestamptz, 'challenge'
           from ch as c
           union all
           select f.tenant_id, f.id, null::text, f.user_id, f.role, f.email, null::text,
                  null::text, f.secondary_auth_provider_id, null::text, null::integer,
                  null::integer, null::integer, null::integer, null::bytea, null::timestamptz,
                  null::text, null::text, null::timestamptz, null::text, f.created_at,
                  null::timestamptz, null::timestamptz, null::bytea, null::timestamptz,
                  null::bytea, null::text, null::timestamptz, null::timestamptz,
                  null::timestamptz, null::integer, null::timestamptz, null::text, null::bytea,
                  null::integer, null::bytea, null::bigint, null::timestamptz, 'factor'
           from u cross join factors f
           where f.tenant_id = u.tenant_id and f.user_id = u.id
           union all
           select s.tenant_id, null::text, null::text, s.user_id, null::text, null::text,
                  null::text, null::text, null::text, null::text, null::integer, null::integer,
                  null::integer, null::integer, null::bytea, null::timestamptz, null::text,
                  null::text, null::timestamptz, null::text, null::timestamptz,
                  null::timestamptz, null::timestamptz, null::bytea, null::timestamptz,
                  null::bytea, null::text, null::timestamptz, null::timestamptz,
                  null::timestamptz, s.consecutive_failures, s.last_failure_at, null::text,
                  null::bytea, null::integer, null::bytea, null::bigint, null::timestamptz,
                  'security'
           from u cross join user_security s
           where s.tenant_id = u.tenant_id and s.user_id = u.id
           union all
           select w.tenant_id, w.id, null::text, null::text, null::text, null::text,
                  null::text, null::text, null::text, null::text, null::integer, null::integer,
                  null::integer, null::integer, null::bytea, null::timestamptz, null::text,
                  null::text, null::timestamptz, null::text, null::timestamptz,
                  null::timestamptz, null::timestamptz, null::bytea, null::timestamptz,
                  null::bytea, null::text, null::timestamptz, null::timestamptz,
                  null::timestamptz, null::integer, null::timestamptz, null::text, null::bytea,
                  null::integer, null::bytea, w.sends, w.oldest, w.kind
           from (select u.tenant_id, u.id, count(d.id) as sends, min(d.created_at) as oldest,
                   'user_sends' as kind
              from u left join deliveries d on d.tenant_id = u.tenant_id and d.user_id = u.id
               and d.created_at > user_since and d.kind in ('enrollment_code', 'login_code')
               and d.resent_from is null
             group by u.tenant_id, u.id
            union all
            select a.tenant_id, a.id, count(d.id), min(d.created_at), 'recipient_sends'
              from unnest(locked_tenants, locked_addresses) as a (tenant_id, id)
              left join deliveries d on d.tenant_id = a.tenant_id
               and lower(d.recipient collate "C") = a.id
               and d.created_at > recipient_since
               and d.kind in ('enrollment_code', 'login_code')
               and d.resent_from is null
             group by a.tenant_id, a.id) as w;
    if tokens is not null then
        return query
        select t.tenant_id, t.id, null::text, t.user_id, null::text, null::text, null::text,
               null::text, null::text, null::text, null::integer, null::integer,
               null::integer, null::integer, null::bytea, null::timestamptz, null::text,
               null::text, null::timestamptz, null::text, t.created_at, null::timestamptz,
               null::timestamptz, null::bytea, null::timestamptz, t.token_hash, t.label,
               t.last_used_at, t.expires_at, t.revoked_at, null::integer, null::timestamptz,
               null::text, null::bytea, null::integer, null::bytea, null::bigint,
               null::timestamptz, 'device'
        from jsonb_to_recordset(tokens) as k (tenant_id text, token_hash text)
             cross join trusted_devices t
           where t.tenant_id = k.tenant_id and t.token_hash = decode(k.token_hash, 'hex');
    end if;
end
$fn$;
