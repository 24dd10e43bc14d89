-- 0007: sealing at commit costs less, and seals only the transaction's own rows.
--
-- 0006 sealed a transaction's rows one by one, under the chain lock (so the
-- other writers' commits waited for it): per row a PL/pgSQL loop step, the
-- canonical encoding (which hashed the message body three times:
-- chain_field is inlined and uses its value thrice), and one UPDATE
-- statement, which compiles the table's CHECK constraints anew. It found
-- the rows by `chain_seq IS NULL`; without statistics (a fresh database
-- while autovacuum is off) PostgreSQL answers that from the unique index on
-- chain_seq, whose NULL entries are every row version inserted since the
-- last VACUUM, so each commit read more than the last (0.95 ms per commit
-- after 17,000 messages). And it took in any row without a position, also
-- one committed by a session that bypassed the triggers: the next commit
-- chained it, and `lienthong audit --verify-chain` could no longer name it.
--
-- Now:
-- * The transaction notes the id of each row it inserts (BEFORE INSERT, in
--   transaction-local settings lienthong.unsealed_<table>, which a
--   rolled-back savepoint restores together with its rows). The seal takes
--   exactly those rows, by primary key, if still without a position: only
--   the transaction's own. The partial indexes *_unsealed go. A row dropped
--   by ON CONFLICT DO NOTHING leaves an id that names no row.
-- * One statement seals the three chains: it encodes the rows, links them
--   in id order with a window aggregate, updates them (one UPDATE per
--   table, however many rows) and moves the heads.
-- * The encoding is computed from the columns, the message body's hash
--   from the sha256 column, equal to SHA-256 of the body by the CHECK
--   constraint message_sha256_matches_body. chain_content is unchanged: the
--   audit still recomputes every hash from the bytes themselves (so a row
--   whose constraint was bypassed would be named, not trusted).
-- * The sealing UPDATE checks every CHECK constraint of the row again, and
--   `x ~ '^[0-9a-f]{64}$'` costs about 6 microseconds in PostgreSQL's regex
--   engine (the counted repetition), two per row: the constraints of that
--   form say the same in a form ten times cheaper.
--
-- What stays as in 0006: the encoding and hashes, one advisory lock for
-- the three chains with its bounded wait, positions in commit order without
-- gaps (per chain, in the order of the ids within a transaction), the
-- append-only refusals, and that deferred triggers of a rolled-back
-- savepoint leave nothing. Each deferred firing still makes sure its own
-- row is sealed: should the noted ids be lost (a RESET ALL inside the
-- transaction), the rows are sealed all the same, one firing at a time.
--
-- Measured with `bench/seal.py --server` (one writer, inside the server,
-- medians of three runs; 0006 then 0007): the seal of a transaction of 1
-- message costs 0.36 and 0.37 ms, of 3 messages 0.74 and 0.58 ms, of 16
-- 2.99 and 1.87 ms, of 32 5.43 and 3.04 ms; and of one 1 MB message, in a
-- procedure of the same kind, 5.5 and 2.0 ms.

-- The same constraints, cheaper to check (see above): exactly 64 bytes, all
-- of them lower-case hexadecimal digits.
ALTER TABLE messages
    DROP CONSTRAINT message_dedup_key_format,
    ADD CONSTRAINT message_dedup_key_format
        CHECK (octet_length(dedup_key) = 64 AND dedup_key !~ '[^0-9a-f]'),
    DROP CONSTRAINT message_chain_hash_format,
    ADD CONSTRAINT message_chain_hash_format
        CHECK (octet_length(chain_hash) = 64 AND chain_hash !~ '[^0-9a-f]');
ALTER TABLE documents
    DROP CONSTRAINT document_sha256_format,
    ADD CONSTRAINT document_sha256_format
        CHECK (octet_length(sha256) = 64 AND sha256 !~ '[^0-9a-f]'),
    DROP CONSTRAINT document_chain_hash_format,
    ADD CONSTRAINT document_chain_hash_format
        CHECK (octet_length(chain_hash) = 64 AND chain_hash !~ '[^0-9a-f]');
ALTER TABLE events
    DROP CONSTRAINT event_chain_hash_format,
    ADD CONSTRAINT event_chain_hash_format
        CHECK (octet_length(chain_hash) = 64 AND chain_hash !~ '[^0-9a-f]');
ALTER TABLE chain_heads
    DROP CONSTRAINT chain_head_hash_format,
    ADD CONSTRAINT chain_head_hash_format CHECK (octet_length(hash) = 64 AND hash !~ '[^0-9a-f]');

DROP INDEX messages_unsealed;
DROP INDEX documents_unsealed;
DROP INDEX events_unsealed;

-- BEFORE INSERT: a new row starts unchained, whatever the inserter put
-- there, and the transaction notes its id for the seal. The settings are
-- local to the transaction and follow its savepoints. Each insert rewrites
-- the setting it appends to, so the recent ids move to a second setting
-- every few hundred rows: a transaction of many rows costs in proportion.
CREATE OR REPLACE FUNCTION chain_unsealed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    recent text := 'lienthong.unsealed_' || TG_TABLE_NAME;
    noted text := coalesce(current_setting(recent, true), '') || ',' || NEW.id;
BEGIN
    NEW.chain_seq := NULL;
    NEW.chain_hash := NULL;
    IF length(noted) > 4000 THEN
        PERFORM set_config(
            recent || '_earlier', coalesce(current_setting(recent || '_earlier', true), '') || noted, true
        );
        noted := '';
    END IF;
    PERFORM set_config(recent, noted, true);
    RETURN NEW;
END
$$;

-- The ids of `chain` noted by chain_unsealed, and `also` if given; NULL when none.
CREATE FUNCTION chain_noted(chain text, also bigint) RETURNS bigint[]
LANGUAGE sql STABLE
AS $$
    SELECT nullif(
        array_remove(
            string_to_array(
                ltrim(
                    coalesce(current_setting('lienthong.unsealed_' || chain || '_earlier', true), '')
                    || coalesce(current_setting('lienthong.unsealed_' || chain, true), ''),
                    ','
                ),
                ','
            )::bigint[] || also,
            NULL
        ),
        '{}'
    )
$$;

-- The canonical encoding of 0002 (chain_content) without its first field,
-- chain_seq, which the seal prepends: chain_content(row) =
-- chain_field('chain_seq', row.chain_seq::text) || chain_content_tail(row).
-- The body's hash comes from the sha256 column (see above).
CREATE FUNCTION chain_content_tail(m messages) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('id', m.id::text)
        || chain_field('dedup_key', m.dedup_key)
        || chain_field('amqp_message_id', m.amqp_message_id)
        || chain_field('routing_key', m.routing_key)
        || chain_field('broker_user', m.broker_user)
        || chain_field('body', m.sha256)
        || chain_field('sha256', m.sha256)
        || chain_field('received_at', extract(epoch FROM m.received_at)::text)
$$;

CREATE FUNCTION chain_content_tail(d documents) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('id', d.id::text)
        || chain_field('sender', d.sender)
        || chain_field('document_id', d.document_id)
        || chain_field('sha256', d.sha256)
        || chain_field('code_number', d.code_number)
        || chain_field('code_notation', d.code_notation)
        || chain_field('subject', d.subject)
        || chain_field('promulgation_date', extract(epoch FROM d.promulgation_date)::text)
        || chain_field('due_date', extract(epoch FROM d.due_date)::text)
        || chain_field('doc_type', d.doc_type)
        || chain_field('priority', d.priority)
        || chain_field('first_message_pk', d.first_message_pk::text)
        || chain_field('created_at', extract(epoch FROM d.created_at)::text)
$$;

CREATE FUNCTION chain_content_tail(e events) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('id', e.id::text)
        || chain_field('delivery_pk', e.delivery_pk::text)
        || chain_field('message_pk', e.message_pk::text)
        || chain_field('kind', e.kind)
        || chain_field('code', e.code)
        || chain_field('reason_code', e.reason_code)
        || chain_field('description', e.description)
        || chain_field('at', extract(epoch FROM e.at)::text)
        || chain_field('recorded_at', extract(epoch FROM e.recorded_at)::text)
$$;

-- One step of a chain: the raw hash of the row at position `seq`, whose
-- content without its chain_seq field is `tail`, after the row hashed
-- `previous` (raw bytes; NULL for the first row sealed, then `tip`).
CREATE FUNCTION chain_link_step(previous bytea, tip bytea, seq bigint, tail bytea) RETURNS bytea
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(coalesce(previous, tip) || chain_field('chain_seq', seq::text) || tail);
END
$$;

-- The chain over rows in window order, as a window aggregate: for each row
-- the raw hash that chain_link(previous hash, chain_content(row)) gives in hex.
CREATE AGGREGATE chain_links(tip bytea, seq bigint, tail bytea) (
    SFUNC = chain_link_step,
    STYPE = bytea
);

-- Seal the rows noted by this transaction that are still without a
-- position (and the row `sealing_id` of table `sealing`, whose firing
-- seals), every chain, in one statement; move the heads; forget the noted
-- ids. Called with the chain lock held.
--
-- The statement finds its rows by primary key, a handful each time. Its
-- plan is made once per session (a custom plan per list of ids would plan
-- the encoding again at every commit), and such a generic plan must not
-- depend on how large the tables were when it was made: scans and hash or
-- merge joins, which would read whole tables, are ruled out.
DROP FUNCTION chain_seal_all();
CREATE FUNCTION chain_seal_all(sealing text, sealing_id bigint) RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    message_ids bigint[] := chain_noted('messages', CASE WHEN sealing = 'messages' THEN sealing_id END);
    document_ids bigint[] := chain_noted('documents', CASE WHEN sealing = 'documents' THEN sealing_id END);
    event_ids bigint[] := chain_noted('events', CASE WHEN sealing = 'events' THEN sealing_id END);
BEGIN
    WITH unsealed AS (
        -- chain_hash, not chain_seq: the unique index on chain_seq holds a
        -- NULL entry for every row version ever inserted until VACUUM, so
        -- a plan through it would read them all.
        SELECT 'messages' AS chain, m.id, row_number() OVER (ORDER BY m.id) AS n,
               chain_content_tail(m) AS tail
        FROM messages m WHERE m.id = ANY (message_ids) AND m.chain_hash IS NULL
        UNION ALL
        SELECT 'documents', d.id, row_number() OVER (ORDER BY d.id), chain_content_tail(d)
        FROM documents d WHERE d.id = ANY (document_ids) AND d.chain_hash IS NULL
        UNION ALL
        SELECT 'events', e.id, row_number() OVER (ORDER BY e.id), chain_content_tail(e)
        FROM events e WHERE e.id = ANY (event_ids) AND e.chain_hash IS NULL
    ), tips AS (
        SELECT c.chain, t.seq, decode(t.hash, 'hex') AS raw
        FROM (SELECT DISTINCT u.chain FROM unsealed u) c, chain_tip(c.chain) t
    ), linked AS MATERIALIZED (
        SELECT u.chain, u.id, tips.seq + u.n AS seq,
               chain_links(tips.raw, tips.seq + u.n, u.tail) OVER w AS raw
        FROM unsealed u JOIN tips ON tips.chain = u.chain
        WINDOW w AS (PARTITION BY u.chain ORDER BY u.n ROWS UNBOUNDED PRECEDING)
    ), sealed_messages AS (
        UPDATE messages m SET chain_seq = l.seq, chain_hash = encode(l.raw, 'hex')
        FROM linked l WHERE l.chain = 'messages' AND m.id = l.id
    ), sealed_documents AS (
        UPDATE documents d SET chain_seq = l.seq, chain_hash = encode(l.raw, 'hex')
        FROM linked l WHERE l.chain = 'documents' AND d.id = l.id
    ), sealed_events AS (
        UPDATE events e SET chain_seq = l.seq, chain_hash = encode(l.raw, 'hex')
        FROM linked l WHERE l.chain = 'events' AND e.id = l.id
    )
    UPDATE chain_heads h SET seq = last.seq, hash = encode(last.raw, 'hex'), updated_at = now()
    FROM (SELECT DISTINCT ON (l.chain) l.chain, l.seq, l.raw FROM linked l
          ORDER BY l.chain, l.seq DESC) last
    WHERE h.chain = last.chain;
    -- Forget the noted ids: they are sealed.
    PERFORM set_config('lienthong.unsealed_messages', '', true),
            set_config('lienthong.unsealed_messages_earlier', '', true),
            set_config('lienthong.unsealed_documents', '', true),
            set_config('lienthong.unsealed_documents_earlier', '', true),
            set_config('lienthong.unsealed_events', '', true),
            set_config('lienthong.unsealed_events_earlier', '', true);
END
$$;

-- AFTER INSERT, deferred to the commit: the first firing of a transaction
-- takes the lock (held to the end of the transaction) and seals every row
-- the transaction noted; the later firings find their row sealed.
CREATE OR REPLACE FUNCTION chain_seal() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    saved_timeout text;
BEGIN
    IF chain_noted(TG_TABLE_NAME, NULL) IS NULL THEN
        -- Sealed already, unless the noted ids were lost: then seal it now.
        IF TG_TABLE_NAME = 'messages' THEN
            PERFORM 1 FROM messages WHERE id = NEW.id AND chain_hash IS NULL;
        ELSIF TG_TABLE_NAME = 'documents' THEN
            PERFORM 1 FROM documents WHERE id = NEW.id AND chain_hash IS NULL;
        ELSE
            PERFORM 1 FROM events WHERE id = NEW.id AND chain_hash IS NULL;
        END IF;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    -- The wait is bounded (chain_lock_wait): past it the commit fails with
    -- lock_not_available, which a caller treats as a transient failure.
    saved_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', chain_lock_wait(), true);
    PERFORM pg_advisory_xact_lock(chain_lock_key());
    PERFORM set_config('lock_timeout', saved_timeout, true);
    PERFORM chain_seal_all(TG_TABLE_NAME, NEW.id);
    RETURN NULL;
END
$$;
