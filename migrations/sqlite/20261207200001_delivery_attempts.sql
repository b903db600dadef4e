-- Every failed attempt of a delivery, for the operator's detail view
-- (GET /ops/deliveries/{id}): when, what kind of failure, and the SMTP
-- server's answer. A successful attempt is not written here: the delivery
-- row itself keeps it (`sent_at`, `smtp_reply`), so the hot path of a
-- healthy service writes nothing more. One insert per failed attempt; the
-- primary key (delivery, then a ULID in time order) is the only index and
-- serves the detail view's lookup.
create table delivery_attempts (
    delivery_id text not null,
    id text not null,
    attempt integer not null,
    at text not null,
    result text not null,
    answer text,
    primary key (delivery_id, id)
);

-- The detail view finds a delivery's dead letter by the delivery. Dead
-- letters are written only when an email gives up, so this index costs the
-- delivery path nothing while it is healthy.
create index dead_letters_by_delivery on dead_letters (delivery_id);
