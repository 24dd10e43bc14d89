-- 0002: tamper evidence (issue 4, point 8).
--
-- The history tables of 0001, `messages`, `documents` and `events`, become
-- append-only and hash-chained:
--
-- * A trigger refuses UPDATE and DELETE of their rows, and TRUNCATE, with an
--   error naming the table. Nothing the exchange does needs either: what
--   changes lives in message_state, deliveries and agencies.
-- * Each table is one chain. A BEFORE INSERT trigger gives every new row its
--   position, `chain_seq` (1, 2, 3, ... without gaps), and
--       chain_hash = hex(sha256(previous chain_hash as 32 bytes || chain_content(row)))
--   where the previous chain_hash of position 1 is the chain's genesis,
--       hex(sha256(utf8('lienthong:' || table name))).
-- * `chain_heads` keeps, per chain, the position and hash of its last row,
--   so that deleting the last rows is detected too; only these triggers
--   may change it.
--
-- `lienthong audit --verify-chain` (exchange/audit.py) recomputes every hash
-- and names the first row changed or deleted. Someone with superuser rights
-- can still disable the triggers and rewrite a whole chain consistently,
-- heads included; the heads it prints are the values to keep elsewhere (a
-- log, another system) so that even that is found.
--
-- The canonical encoding: chain_content(row)
-- ------------------------------------------
-- The row's fields, in the order listed by each chain_content function
-- below, chain_seq included (chain_hash of course not), each encoded as
--     utf8(field name) '=' '~' '\n'                      when the value is NULL
--     utf8(field name) '=' <n> ':' <v> '\n'             otherwise
-- where <v> is the UTF-8 bytes of the value's text and <n> the number of
-- those bytes in decimal ASCII (so no value can be mistaken for another,
-- whatever characters it holds). The text of a value:
--     text                   itself;
--     integer, bigint        decimal digits, '-' if negative;
--     timestamptz and date   extract(epoch FROM value)::text, the seconds
--                            since 1970-01-01 00:00 UTC (timestamptz with
--                            six decimals, e.g. 1714532645.123456; a date as
--                            its midnight UTC, e.g. 1709596800; 'Infinity'),
--                            which no TimeZone or DateStyle setting changes;
--     bytea (messages.body)  the lower-case hex SHA-256 of the bytes, computed
--                            from the bytes themselves (not the sha256 column).
-- A column added to a chained table later is not covered until a migration
-- defines a new encoding version; rows hashed before keep the old one.
--
-- Serialisation and its cost
-- --------------------------
-- The next row's hash depends on the previous row, so two transactions must
-- not extend a chain at once. The trigger takes ONE transaction-level
-- advisory lock shared by the three chains (pg_advisory_xact_lock), held to
-- the end of the transaction: chained inserts are serialised, transaction by
-- transaction. One lock for all chains means no two transactions can ever
-- wait for each other's chain locks in opposite orders, whatever order they
-- insert in. The price: a transaction that inserted into a chained table
-- holds the lock until it commits, so everything it does after the insert
-- is serialised with the other writers. Measured on the development machine
-- with transactions shaped like the worker's (message, document, delivery,
-- event, outcome; then the outbox flag): 1 writer ~270 tx/s with or without
-- the chains; 8 to 32 concurrent writers ~300 tx/s chained against ~850
-- without (p50 latency 26 ms instead of 8 ms at 8 writers); no deadlock.
--
-- A writer must therefore never wait, while holding the lock, for something
-- another writer holds, such as another connection of a pool the writers
-- queued behind it have taken: PostgreSQL cannot see such a deadlock. As a
-- safety net the wait for the lock is bounded (chain_lock_wait): past it the
-- insert fails with lock_not_available (SQLSTATE 55P03), the waiter's
-- transaction ends and frees its connection, and its caller retries.
--
-- Under the lock the trigger reads the previous row from the table itself
-- (the last chain_seq, visible once its writer committed) and from
-- chain_heads, and takes the later of the two: an INSERT ... ON CONFLICT DO
-- NOTHING whose row is dropped after the trigger ran leaves no trace (the
-- head moves in an AFTER trigger, which fires only for rows really
-- inserted), a multi-row INSERT sees its own earlier rows, and rows deleted
-- at the end behind the triggers' back leave a gap instead of being reused.
-- Transactions are expected at READ COMMITTED (the default): the unique
-- chain_seq turns a stale read at a higher isolation level into an error,
-- never into a fork.

ALTER TABLE messages  ADD COLUMN chain_seq bigint, ADD COLUMN chain_hash text;
ALTER TABLE documents ADD COLUMN chain_seq bigint, ADD COLUMN chain_hash text;
ALTER TABLE events    ADD COLUMN chain_seq bigint, ADD COLUMN chain_hash text;

-- The lock key: the first eight bytes of SHA-256("lienthong.chain") as a
-- signed 64-bit integer (the migration lock uses "lienthong.migrate").
CREATE FUNCTION chain_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT -543915783785796327::bigint $$;

-- The longest a writer waits for the chain lock. Writers hold it for a few
-- milliseconds each, so only a writer that itself waits while holding it
-- (for a pooled connection held by the very writers queued behind it) makes
-- anyone wait this long: the waiters then fail and retry, which frees what
-- the holder waits for, instead of everyone hanging for ever.
CREATE FUNCTION chain_lock_wait() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT '10s'::text $$;

CREATE FUNCTION chain_genesis(chain text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT encode(sha256(convert_to('lienthong:' || chain, 'UTF8')), 'hex') $$;

-- One field of the canonical encoding (see above).
CREATE FUNCTION chain_field(name text, value text) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT convert_to(name || '=', 'UTF8')
        || CASE
               WHEN value IS NULL THEN convert_to('~', 'UTF8')
               ELSE convert_to(octet_length(convert_to(value, 'UTF8'))::text || ':', 'UTF8')
                    || convert_to(value, 'UTF8')
           END
        || convert_to(E'\n', 'UTF8')
$$;

CREATE FUNCTION chain_content(m messages) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('chain_seq', m.chain_seq::text)
        || chain_field('id', m.id::text)
        || chain_field('dedup_key', m.dedup_key)
        || chain_field('amqp_message_id', m.amqp_message_id)
        || chain_field('routing_key', m.routing_key)
        || chain_field('broker_user', m.broker_user)
        || chain_field('body', encode(sha256(m.body), 'hex'))
        || chain_field('sha256', m.sha256)
        || chain_field('received_at', extract(epoch FROM m.received_at)::text)
$$;

CREATE FUNCTION chain_content(d documents) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('chain_seq', d.chain_seq::text)
        || chain_field('id', d.id::text)
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

CREATE FUNCTION chain_content(e events) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('chain_seq', e.chain_seq::text)
        || chain_field('id', e.id::text)
        || chain_field('delivery_pk', e.delivery_pk::text)
        || chain_field('message_pk', e.message_pk::text)
        || chain_field('kind', e.kind)
        || chain_field('code', e.code)
        || chain_field('reason_code', e.reason_code)
        || chain_field('description', e.description)
        || chain_field('at', extract(epoch FROM e.at)::text)
        || chain_field('recorded_at', extract(epoch FROM e.recorded_at)::text)
$$;

-- The hash of a row at its position after the row hashed `previous`.
CREATE FUNCTION chain_link(previous text, content bytea) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT encode(sha256(decode(previous, 'hex') || content), 'hex') $$;

CREATE TABLE chain_heads (
    chain      text PRIMARY KEY
               CONSTRAINT chain_head_chain_name CHECK (chain IN ('messages', 'documents', 'events')),
    -- Position and hash of the chain's last row; 0 and the genesis when empty.
    seq        bigint NOT NULL CONSTRAINT chain_head_seq_range CHECK (seq >= 0),
    hash       text NOT NULL CONSTRAINT chain_head_hash_format CHECK (hash ~ '^[0-9a-f]{64}$'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Chain the rows already recorded, in the order of their ids.
DO $$
DECLARE
    previous text;
    position bigint;
    m messages%ROWTYPE;
    d documents%ROWTYPE;
    e events%ROWTYPE;
BEGIN
    previous := chain_genesis('messages');
    position := 0;
    FOR m IN SELECT * FROM messages ORDER BY id LOOP
        position := position + 1;
        m.chain_seq := position;
        previous := chain_link(previous, chain_content(m));
        UPDATE messages SET chain_seq = position, chain_hash = previous WHERE id = m.id;
    END LOOP;
    INSERT INTO chain_heads (chain, seq, hash) VALUES ('messages', position, previous);

    previous := chain_genesis('documents');
    position := 0;
    FOR d IN SELECT * FROM documents ORDER BY id LOOP
        position := position + 1;
        d.chain_seq := position;
        previous := chain_link(previous, chain_content(d));
        UPDATE documents SET chain_seq = position, chain_hash = previous WHERE id = d.id;
    END LOOP;
    INSERT INTO chain_heads (chain, seq, hash) VALUES ('documents', position, previous);

    previous := chain_genesis('events');
    position := 0;
    FOR e IN SELECT * FROM events ORDER BY id LOOP
        position := position + 1;
        e.chain_seq := position;
        previous := chain_link(previous, chain_content(e));
        UPDATE events SET chain_seq = position, chain_hash = previous WHERE id = e.id;
    END LOOP;
    INSERT INTO chain_heads (chain, seq, hash) VALUES ('events', position, previous);
END
$$;

ALTER TABLE messages
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN chain_hash SET NOT NULL,
    ADD CONSTRAINT message_chain_seq_unique UNIQUE (chain_seq),
    ADD CONSTRAINT message_chain_seq_positive CHECK (chain_seq >= 1),
    ADD CONSTRAINT message_chain_hash_format CHECK (chain_hash ~ '^[0-9a-f]{64}$');
ALTER TABLE documents
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN chain_hash SET NOT NULL,
    ADD CONSTRAINT document_chain_seq_unique UNIQUE (chain_seq),
    ADD CONSTRAINT document_chain_seq_positive CHECK (chain_seq >= 1),
    ADD CONSTRAINT document_chain_hash_format CHECK (chain_hash ~ '^[0-9a-f]{64}$');
ALTER TABLE events
    ALTER COLUMN chain_seq SET NOT NULL,
    ALTER COLUMN chain_hash SET NOT NULL,
    ADD CONSTRAINT event_chain_seq_unique UNIQUE (chain_seq),
    ADD CONSTRAINT event_chain_seq_positive CHECK (chain_seq >= 1),
    ADD CONSTRAINT event_chain_hash_format CHECK (chain_hash ~ '^[0-9a-f]{64}$');

-- BEFORE INSERT: the row's position and hash. Whatever the inserter put in
-- chain_seq and chain_hash is overwritten.
CREATE FUNCTION chain_extend() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    saved_timeout text;
    head_seq bigint;
    head_hash text;
    last_seq bigint;
    last_hash text;
BEGIN
    -- Held until the transaction ends (or its savepoint is rolled back,
    -- which removes the row too). The wait is bounded (see chain_lock_wait):
    -- past it the insert fails with lock_not_available, which a caller
    -- treats as a transient failure and retries.
    saved_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', chain_lock_wait(), true);
    PERFORM pg_advisory_xact_lock(chain_lock_key());
    PERFORM set_config('lock_timeout', saved_timeout, true);
    SELECT seq, hash INTO head_seq, head_hash FROM chain_heads WHERE chain = TG_TABLE_NAME;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the hash chain of table % has no head in chain_heads', TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'the row was removed behind the triggers'' back; run lienthong audit --verify-chain';
    END IF;
    -- Static statements per table, so that PL/pgSQL keeps their plans.
    IF TG_TABLE_NAME = 'messages' THEN
        SELECT chain_seq, chain_hash INTO last_seq, last_hash
        FROM messages ORDER BY chain_seq DESC LIMIT 1;
    ELSIF TG_TABLE_NAME = 'documents' THEN
        SELECT chain_seq, chain_hash INTO last_seq, last_hash
        FROM documents ORDER BY chain_seq DESC LIMIT 1;
    ELSE
        SELECT chain_seq, chain_hash INTO last_seq, last_hash
        FROM events ORDER BY chain_seq DESC LIMIT 1;
    END IF;
    IF last_seq IS NOT NULL AND last_seq > head_seq THEN
        head_seq := last_seq;
        head_hash := last_hash;
    END IF;
    NEW.chain_seq := head_seq + 1;
    NEW.chain_hash := chain_link(head_hash, chain_content(NEW));
    RETURN NEW;
END
$$;

-- AFTER INSERT: move the head. Fires only for rows really inserted (not for
-- one dropped by ON CONFLICT DO NOTHING), still under the lock.
CREATE FUNCTION chain_advance_head() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE chain_heads SET seq = NEW.chain_seq, hash = NEW.chain_hash, updated_at = now()
    WHERE chain = TG_TABLE_NAME AND seq < NEW.chain_seq;
    RETURN NULL;
END
$$;

CREATE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        RAISE EXCEPTION 'table % is append-only history: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'restrict_violation',
                  HINT = 'history is never changed; mutable state lives in message_state, deliveries and agencies';
    END IF;
    RAISE EXCEPTION 'table % is append-only history: % of row id % refused', TG_TABLE_NAME, TG_OP, OLD.id
        USING ERRCODE = 'restrict_violation',
              HINT = 'history is never changed; mutable state lives in message_state, deliveries and agencies';
END
$$;

-- chain_heads changes only from chain_advance_head (trigger depth 2: the
-- INSERT's trigger runs the UPDATE that fires this one).
CREATE FUNCTION refuse_head_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'table chain_heads is kept by the chain triggers: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER chain_extend BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION chain_extend();
CREATE TRIGGER chain_advance_head AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION chain_advance_head();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER chain_extend BEFORE INSERT ON documents
    FOR EACH ROW EXECUTE FUNCTION chain_extend();
CREATE TRIGGER chain_advance_head AFTER INSERT ON documents
    FOR EACH ROW EXECUTE FUNCTION chain_advance_head();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON documents
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON documents
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER chain_extend BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chain_extend();
CREATE TRIGGER chain_advance_head AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chain_advance_head();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER kept_by_triggers BEFORE UPDATE OR DELETE ON chain_heads
    FOR EACH ROW EXECUTE FUNCTION refuse_head_change();
CREATE TRIGGER kept_by_triggers_truncate BEFORE TRUNCATE ON chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_head_change();
