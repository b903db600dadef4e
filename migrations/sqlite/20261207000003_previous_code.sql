-- A second attempt at the same send (the worker died after the SMTP server
-- took the message, its lease ran out, the outbox sweep pushed it again, or
-- an SMTP retry) mints a new code, but the first copy may already be in the
-- user's inbox. The code it replaced stays valid beside it, for its own
-- lifetime: its keyed hash and expiry move here when the same delivery
-- mints again (src/store/minted_codes.rs). A new send (challenge.resend,
-- an operator's resend) and closing the challenge clear both.
alter table challenges add column previous_code_hash blob;
alter table challenges add column previous_code_expires_at text;
