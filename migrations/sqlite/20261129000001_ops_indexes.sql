-- Indexes for the operations side (/ops, /metrics, the dashboard): the
-- per-minute throughput reads deliveries by sent_at and dead letters by
-- dead_at, the provider activity reads deliveries changed since a time, and
-- the dead letter list and gauge read only unresolved letters.
create index deliveries_by_sent_at on deliveries (sent_at);
create index deliveries_by_update on deliveries (updated_at);
create index dead_letters_unresolved on dead_letters (resolved_at, dead_at);
