-- A generated record for measuring queries on a large partitioned record
-- (docs/performance.md): :n messages received evenly over 2025 (twelve
-- month partitions), 100 agencies, a document per two messages (two
-- recipients), a delivery and a receipt per message, a status 01 per
-- second delivery, 2% rejected and 1% parked.
--
--   psql -v n=10000000 -f bench/partitions_dataset.sql DATABASE
--
-- On a database migrated by `lienthong init` and otherwise empty. The
-- chain positions are numbered but the hashes are placeholders (the rows
-- are written with the triggers off, as a restore would): measure queries
-- here, never run `audit --verify-chain`.

\set ON_ERROR_STOP on
\timing on

SELECT record_partition_create(t, m::date)
FROM unnest(ARRAY['messages', 'events']) AS t,
     generate_series(date '2025-01-01', date '2025-12-01', interval '1 month') AS m;

INSERT INTO agencies (code, name, level, broker_user)
SELECT format('000.00.%s.H26', lpad(a::text, 2, '0')), 'Cơ quan ' || a, 2, 'agency' || a
FROM generate_series(0, 99) AS a;

SET session_replication_role = replica;

CREATE TEMPORARY TABLE gen AS
SELECT i,
       timestamptz '2025-01-01 00:00Z' + (i - 1) * (interval '365 days' / :n) AS at,
       format('000.00.%s.H26', lpad((i % 100)::text, 2, '0')) AS recipient,
       format('000.00.%s.H26', lpad(((i + 50) % 100)::text, 2, '0')) AS sender,
       convert_to(repeat('<edXML document ' || i || '/>', 12), 'UTF8') AS body
FROM generate_series(1, :n) AS i;

INSERT INTO messages (id, dedup_key, amqp_message_id, routing_key, broker_user, body, sha256,
                      received_at, chain_seq, chain_hash)
OVERRIDING SYSTEM VALUE
SELECT i, md5(i::text) || md5((-i)::text), 'm' || i, recipient, 'agency' || (i + 50) % 100,
       body, encode(sha256(body), 'hex'), at, i, md5(i::text) || md5((-i)::text)
FROM gen;

INSERT INTO message_keys (dedup_key, message_pk, received_at)
SELECT md5(i::text) || md5((-i)::text), i, at FROM gen;

INSERT INTO documents (id, sender, document_id, sha256, subject, due_date, first_message_pk,
                       created_at, chain_seq, chain_hash)
OVERRIDING SYSTEM VALUE
SELECT (i + 1) / 2, sender, format('%s,%s,%s/QĐ', sender, to_char(at, 'YYYY/MM/DD'), (i + 1) / 2),
       md5(i::text) || md5((-i)::text), 'Văn bản ' || i, (at + interval '30 days')::date, i, at,
       (i + 1) / 2, md5(i::text) || md5((-i)::text)
FROM gen WHERE i % 2 = 1;

-- A delivery's due_date is its document's: the DueDate of the document's
-- first message, the odd one before it.
INSERT INTO deliveries (id, document_pk, recipient, message_pk, state, delivered_at, created_at,
                        due_date)
OVERRIDING SYSTEM VALUE
SELECT i, (i + 1) / 2, recipient, i, CASE WHEN i % 2 = 0 THEN '01' END, at, at,
       (timestamptz '2025-01-01 00:00Z' + (2 * ((i + 1) / 2) - 2) * (interval '365 days' / :n)
        + interval '30 days')::date
FROM gen
WHERE i % 50 <> 0 AND i % 97 <> 0;

INSERT INTO message_state (message_pk, kind, sender, outcome, reason_code, document_pk,
                           document_id, published_at, updated_at, received_at)
SELECT i, 'document', g.sender,
       CASE WHEN i % 50 = 0 THEN 'rejected' WHEN i % 97 = 0 THEN 'parked' ELSE 'delivered' END,
       CASE WHEN i % 50 = 0 THEN 'REJECTED_SIGNATURE' WHEN i % 97 = 0 THEN 'PARKED_TRANSIENT' END,
       CASE WHEN i % 50 <> 0 AND i % 97 <> 0 THEN (i + 1) / 2 END,
       format('%s,%s,%s/QĐ', g.sender, to_char(at, 'YYYY/MM/DD'), (i + 1) / 2), at, at, at
FROM gen g;

INSERT INTO events (id, delivery_pk, message_pk, kind, code, at, recorded_at, chain_seq, chain_hash)
OVERRIDING SYSTEM VALUE
SELECT 2 * i - 1, i, i, 'receipt', 'delivered', at, at, 2 * i - 1, md5(i::text) || md5((-i)::text)
FROM gen WHERE i % 50 <> 0 AND i % 97 <> 0
UNION ALL
SELECT 2 * i, i, i, 'status', '01', at + interval '2 hours', at + interval '2 hours', 2 * i,
       md5(i::text) || md5((-i)::text)
FROM gen WHERE i % 2 = 0 AND i % 50 <> 0 AND i % 97 <> 0;

INSERT INTO event_keys (message_pk, delivery_pk, kind, event_pk, recorded_at)
SELECT message_pk, delivery_pk, kind, id, recorded_at FROM events;

SET session_replication_role = origin;
SELECT setval(pg_get_serial_sequence('messages', 'id'), (SELECT max(id) FROM messages)),
       setval(pg_get_serial_sequence('documents', 'id'), (SELECT max(id) FROM documents)),
       setval(pg_get_serial_sequence('deliveries', 'id'), (SELECT max(id) FROM deliveries)),
       setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events));
VACUUM ANALYZE;
