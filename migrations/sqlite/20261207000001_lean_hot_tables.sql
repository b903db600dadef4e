-- The PostgreSQL migration of this version drops the hot tables' foreign
-- keys to `tenants` (their checks cost 7-20 % of PostgreSQL's CPU per
-- webhook). SQLite checks a foreign key with one in-process index lookup,
-- and dropping one would mean rebuilding each table, so SQLite keeps them;
-- this version exists so that both backends keep the same migration list.
select 1;
