-- 0005: how many times handling of a message was started after a redelivery.
--
-- The broker's x-delivery-count counts every message a dead worker held,
-- including the prefetched ones it never started: blaming all of them for
-- one poison message parked innocent neighbours. The worker handles
-- redelivered messages one at a time and counts here, in its own small
-- transaction, each time it really starts one; a message whose handling was
-- started too often without finishing is the poison. Mutable state, not
-- history: not chained (a row is dropped from nothing; it only grows).

CREATE TABLE processing_starts (
    dedup_key   text PRIMARY KEY,
    starts      integer NOT NULL CONSTRAINT processing_starts_positive CHECK (starts > 0),
    last_at     timestamptz NOT NULL DEFAULT now()
);
