-- 0020: the replay filters and the overdue report read only what they list.
--
-- The replay tool lists the refused messages received in a period, oldest
-- first, possibly of one sender, for some reasons, up to a limit. The time
-- received is the partition key of `messages`, the outcome and the sender
-- are in `message_state`: a list of one month had to join every message of
-- the month to its state, or every refused state of the record to the
-- month. `message_state` keeps the time its message was received, which
-- never changes (the writers copy it from the message they insert), and
-- the refused states are indexed by it, alone and after the sender: a
-- month's list reads the month's refused states in order, one sender's
-- only that sender's, and a limit stops the scan.
--
-- The report counts the deliveries past their document's DueDate whose
-- recipient has not answered (02 returned, 06 done). A delivery keeps its
-- document's DueDate (the writers copy it from the document, which never
-- changes), and the open deliveries that have one are indexed by it: the
-- overdue count reads that index alone (the open deliveries due before the
-- day, not the answered ones nor the documents), the overdue list the
-- first entries of it. The index's predicate is the
-- overdue queries' text (exchange/store/queries.py, _OVERDUE_WHERE):
-- PostgreSQL uses a partial index only for a query that says what its
-- predicate says.
--
-- Both columns are filled here from the rows they copy: every row of
-- message_state is rewritten once (plan the time on a large record:
-- docs/performance.md gives the figure measured here).

ALTER TABLE message_state ADD COLUMN received_at timestamptz;
-- message_keys holds the time received of every message, detached since or not.
UPDATE message_state s SET received_at = k.received_at
FROM message_keys k WHERE k.message_pk = s.message_pk;
ALTER TABLE message_state ALTER COLUMN received_at SET NOT NULL;

CREATE INDEX message_state_refused_received ON message_state (received_at, message_pk)
    WHERE outcome IN ('rejected', 'parked');
CREATE INDEX message_state_refused_sender ON message_state (sender, received_at, message_pk)
    WHERE outcome IN ('rejected', 'parked');
-- A reason is given only to a refused message, and a sender's refusals may
-- be most of the record's (an agency whose certificate expired): taken as
-- independent, the planner counts a few rows where there are thousands,
-- and sorts them all where it would stop at the list's limit. The values
-- seen together tell it (ANALYZE, below and by autovacuum).
CREATE STATISTICS message_state_reasons (mcv) ON outcome, reason_code FROM message_state;
CREATE STATISTICS message_state_senders (mcv) ON sender, outcome FROM message_state;

ALTER TABLE deliveries ADD COLUMN due_date date;
UPDATE deliveries v SET due_date = d.due_date
FROM documents d WHERE d.id = v.document_pk AND d.due_date IS NOT NULL;

CREATE INDEX deliveries_overdue ON deliveries (due_date)
    WHERE due_date IS NOT NULL AND delivered_at IS NOT NULL AND NOT withdrawn
      AND coalesce(state, '') NOT IN ('02', '06');

-- Both tables were rewritten: the planner's figures, now.
ANALYZE message_state, deliveries;
