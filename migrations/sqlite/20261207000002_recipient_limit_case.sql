-- The per-address send limit compares whole addresses with ASCII letters
-- lowercased (`Jane@Shop.example` and `jane@shop.example` share a limit;
-- src/store/batch/read.rs counts by `lower(recipient)`, which lowercases
-- ASCII letters only here). The index on the address as typed served only
-- that count.
create index deliveries_by_recipient_ci
    on deliveries (tenant_id, lower(recipient), created_at);
drop index deliveries_by_recipient;
