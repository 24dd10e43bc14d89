-- 0011: an agency can be disabled without losing its history.
--
-- `lienthong agency disable CODE` deletes its broker user (or takes its
-- permissions away, for a user managed elsewhere) and sets disabled_at; the workers refuse what it still publishes
-- (REJECTED_SENDER_DISABLED). Its row stays, and with it every message,
-- delivery and status that names it (they reference agencies.code), so the
-- record of what it sent and received is whole. `agency enable` clears it.
-- NULL: the agency is enabled.
ALTER TABLE agencies ADD COLUMN disabled_at timestamptz;
