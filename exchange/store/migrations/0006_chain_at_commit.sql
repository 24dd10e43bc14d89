-- 0006: the hash chains are extended when a transaction commits, not when it inserts.
--
-- Until now (0002) a BEFORE INSERT trigger took the chain lock at a
-- transaction's first chained insert and held it to the commit, so
-- everything a writer did after that insert (its other statements, each a
-- round trip from the worker) ran one writer after another: the lock, not
-- the machine, bounded the exchange (issue 6, docs/bench.md).
--
-- Now a row is inserted unchained (chain_seq and chain_hash NULL, whatever
-- the inserter put there), and a deferred constraint trigger seals the
-- transaction's rows when it commits: under the same single advisory lock,
-- it gives every row the transaction inserted, table by table in a fixed
-- order (messages, documents, events) and in the order of their ids, its
-- position and hash, and moves the heads. The lock is now held only for the
-- sealing (work inside the server, no round trip) and the commit itself, so
-- writers prepare their rows concurrently and only their commits queue up.
--
-- What stays as in 0002: the canonical encoding (chain_content), the
-- genesis, the heads, the append-only refusal, the bounded wait for the
-- lock, and that positions follow the commit order of the rows, without
-- gaps. What changes for a reader: a row has no position until its
-- transaction commits, and positions follow the commit order of
-- transactions rather than the order of their inserts.
--
-- Why this keeps the guarantee: a row without a position can only be a row
-- of the reader's own uncommitted transaction (every committed row was
-- sealed by its transaction's commit), so the exception made to the
-- append-only rule below, setting the position and hash of a row that has
-- none, from inside a trigger, touches nothing another transaction can
-- see. Deferred triggers of a savepoint rolled back are discarded with its
-- rows; rows dropped by ON CONFLICT DO NOTHING never fire an AFTER trigger.
-- A session that bypasses triggers (session_replication_role = replica, a
-- superuser's right) leaves rows without a position:
-- `lienthong audit --verify-chain` names them.

DROP TRIGGER chain_extend ON messages;
DROP TRIGGER chain_extend ON documents;
DROP TRIGGER chain_extend ON events;
DROP TRIGGER chain_advance_head ON messages;
DROP TRIGGER chain_advance_head ON documents;
DROP TRIGGER chain_advance_head ON events;
DROP FUNCTION chain_extend();
DROP FUNCTION chain_advance_head();

ALTER TABLE messages  ALTER COLUMN chain_seq DROP NOT NULL, ALTER COLUMN chain_hash DROP NOT NULL;
ALTER TABLE documents ALTER COLUMN chain_seq DROP NOT NULL, ALTER COLUMN chain_hash DROP NOT NULL;
ALTER TABLE events    ALTER COLUMN chain_seq DROP NOT NULL, ALTER COLUMN chain_hash DROP NOT NULL;

-- The rows a transaction has to seal: only ever its own, a handful.
CREATE INDEX messages_unsealed  ON messages  (id) WHERE chain_seq IS NULL;
CREATE INDEX documents_unsealed ON documents (id) WHERE chain_seq IS NULL;
CREATE INDEX events_unsealed    ON events    (id) WHERE chain_seq IS NULL;

-- BEFORE INSERT: a new row starts unchained, whatever the inserter put there.
CREATE FUNCTION chain_unsealed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.chain_seq := NULL;
    NEW.chain_hash := NULL;
    RETURN NEW;
END
$$;

-- The last position and hash of a chain: the later of its head and its last
-- row (see 0002: a row deleted at the end leaves a gap, never a reused position).
CREATE FUNCTION chain_tip(chain text, OUT seq bigint, OUT hash text)
LANGUAGE plpgsql
AS $$
DECLARE
    last_seq bigint;
    last_hash text;
BEGIN
    SELECT h.seq, h.hash INTO seq, hash FROM chain_heads h WHERE h.chain = chain_tip.chain;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the hash chain of table % has no head in chain_heads', chain
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'the row was removed behind the triggers'' back; run lienthong audit --verify-chain';
    END IF;
    -- Static statements per table, so that PL/pgSQL keeps their plans.
    IF chain = 'messages' THEN
        SELECT m.chain_seq, m.chain_hash INTO last_seq, last_hash
        FROM messages m WHERE m.chain_seq IS NOT NULL ORDER BY m.chain_seq DESC LIMIT 1;
    ELSIF chain = 'documents' THEN
        SELECT d.chain_seq, d.chain_hash INTO last_seq, last_hash
        FROM documents d WHERE d.chain_seq IS NOT NULL ORDER BY d.chain_seq DESC LIMIT 1;
    ELSE
        SELECT e.chain_seq, e.chain_hash INTO last_seq, last_hash
        FROM events e WHERE e.chain_seq IS NOT NULL ORDER BY e.chain_seq DESC LIMIT 1;
    END IF;
    IF last_seq IS NOT NULL AND last_seq > seq THEN
        seq := last_seq;
        hash := last_hash;
    END IF;
END
$$;

-- Give the transaction's unchained rows their positions and hashes, every
-- chain, and move the heads. Called with the chain lock held.
CREATE FUNCTION chain_seal_all() RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    tip record;
    position bigint;
    previous text;
    m messages%ROWTYPE;
    d documents%ROWTYPE;
    e events%ROWTYPE;
BEGIN
    IF EXISTS (SELECT 1 FROM messages WHERE chain_seq IS NULL) THEN
        tip := chain_tip('messages');
        position := tip.seq;
        previous := tip.hash;
        FOR m IN SELECT * FROM messages WHERE chain_seq IS NULL ORDER BY id LOOP
            position := position + 1;
            m.chain_seq := position;
            previous := chain_link(previous, chain_content(m));
            UPDATE messages SET chain_seq = position, chain_hash = previous WHERE id = m.id;
        END LOOP;
        UPDATE chain_heads SET seq = position, hash = previous, updated_at = now()
        WHERE chain = 'messages';
    END IF;

    IF EXISTS (SELECT 1 FROM documents WHERE chain_seq IS NULL) THEN
        tip := chain_tip('documents');
        position := tip.seq;
        previous := tip.hash;
        FOR d IN SELECT * FROM documents WHERE chain_seq IS NULL ORDER BY id LOOP
            position := position + 1;
            d.chain_seq := position;
            previous := chain_link(previous, chain_content(d));
            UPDATE documents SET chain_seq = position, chain_hash = previous WHERE id = d.id;
        END LOOP;
        UPDATE chain_heads SET seq = position, hash = previous, updated_at = now()
        WHERE chain = 'documents';
    END IF;

    IF EXISTS (SELECT 1 FROM events WHERE chain_seq IS NULL) THEN
        tip := chain_tip('events');
        position := tip.seq;
        previous := tip.hash;
        FOR e IN SELECT * FROM events WHERE chain_seq IS NULL ORDER BY id LOOP
            position := position + 1;
            e.chain_seq := position;
            previous := chain_link(previous, chain_content(e));
            UPDATE events SET chain_seq = position, chain_hash = previous WHERE id = e.id;
        END LOOP;
        UPDATE chain_heads SET seq = position, hash = previous, updated_at = now()
        WHERE chain = 'events';
    END IF;
END
$$;

-- AFTER INSERT, deferred to the commit: the first firing of a transaction
-- takes the lock (held to the end of the transaction) and seals every row
-- the transaction inserted; the later firings find their row sealed.
CREATE FUNCTION chain_seal() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    saved_timeout text;
BEGIN
    IF TG_TABLE_NAME = 'messages' THEN
        PERFORM 1 FROM messages WHERE id = NEW.id AND chain_seq IS NULL;
    ELSIF TG_TABLE_NAME = 'documents' THEN
        PERFORM 1 FROM documents WHERE id = NEW.id AND chain_seq IS NULL;
    ELSE
        PERFORM 1 FROM events WHERE id = NEW.id AND chain_seq IS NULL;
    END IF;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The wait is bounded (chain_lock_wait): past it the commit fails with
    -- lock_not_available, which a caller treats as a transient failure.
    saved_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', chain_lock_wait(), true);
    PERFORM pg_advisory_xact_lock(chain_lock_key());
    PERFORM set_config('lock_timeout', saved_timeout, true);
    PERFORM chain_seal_all();
    RETURN NULL;
END
$$;

-- Append-only, with the one exception the sealing needs: a row without a
-- position (one of the transaction's own, see above) gets its position and
-- hash from inside a trigger, and nothing else of it changes.
CREATE OR REPLACE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_LEVEL = 'ROW' AND TG_OP = 'UPDATE' AND OLD.chain_seq IS NULL
       AND NEW.chain_seq IS NOT NULL AND pg_trigger_depth() > 1 THEN
        RETURN NEW;
    END IF;
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

CREATE TRIGGER chain_unsealed BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION chain_unsealed();
CREATE TRIGGER chain_unsealed BEFORE INSERT ON documents
    FOR EACH ROW EXECUTE FUNCTION chain_unsealed();
CREATE TRIGGER chain_unsealed BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chain_unsealed();

CREATE CONSTRAINT TRIGGER chain_seal AFTER INSERT ON messages
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_seal();
CREATE CONSTRAINT TRIGGER chain_seal AFTER INSERT ON documents
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_seal();
CREATE CONSTRAINT TRIGGER chain_seal AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_seal();
