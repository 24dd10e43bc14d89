-- 0018: the record is partitioned by month; old months can be detached.
--
-- `messages` (by received_at), `events` (by recorded_at) and the gateway's
-- `gateway_mailbox` (by received_at, below) become partitioned tables
-- with one partition per calendar month, UTC
-- (messages_2026_01 holds received_at in [2026-01-01 00:00Z, 2026-02-01
-- 00:00Z)), and a DEFAULT partition (messages_default) that catches a row
-- for a month nobody created yet, so that no insert ever fails for want of
-- a partition. `record_partitions_ensure(months_ahead)` creates the
-- current month's and the next ones' (this migration: three ahead; the
-- `lienthong retention run` command at each run). Queries that say which
-- period they read (reports, replay filters) touch only its partitions.
--
-- Uniqueness that outlives partitions
-- -----------------------------------
-- PostgreSQL checks a unique key only inside one partition, unless it holds
-- the partition key, and a message's identity (dedup_key) or an event's
-- (message, delivery, kind) must be unique for ever, whatever month a
-- redelivery lands in: that is the exactly-once guarantee. So each has a
-- small unpartitioned key table, never detached:
--   message_keys  dedup_key -> message_pk, received_at;
--   event_keys    (message_pk, delivery_pk, kind) -> event_pk, recorded_at;
--   mailbox_keys  (queue, message_id) -> doc_id (unique too), received_at.
-- A BEFORE INSERT trigger of messages (events) claims the row's key there
-- first, `INSERT ... ON CONFLICT DO NOTHING`: when the key is taken the row
-- is skipped, exactly what `ON CONFLICT (dedup_key) DO NOTHING` did (the
-- unique index of the key table makes a concurrent claimer wait for the
-- first one's transaction, as the unique index of messages did). The
-- foreign keys that named messages(id) name message_keys(message_pk): a
-- message_state, delivery or document row can only name a message that was
-- recorded, detached since or not. The key tables are written only by those
-- triggers (SECURITY DEFINER); nobody else may write them.
--
-- The chains
-- ----------
-- Rows keep their id, chain_seq and chain_hash: the copy below changes no
-- byte that a hash covers, so `lienthong audit --verify-chain` verifies the
-- chains as before. chain_seq can no longer be a unique key across
-- partitions; positions are given under the chain lock at commit (0006) and
-- the head row of chain_heads (which a stale writer cannot update, see
-- 0002), and the audit names a repeated or missing position. The seal's
-- triggers named their chain by TG_TABLE_NAME, which is a partition's name
-- when they fire on one: they now name it by the partitioned table.
--
-- Detached months
-- ---------------
-- A month's partition is exported, then detached and dropped by `lienthong
-- retention run` (docs/operations.md). Positions follow commit order and
-- partitions the time a transaction started, so a month holds one long run
-- of positions and, near its boundaries, short runs interleaved with the
-- neighbouring month's. `detached_partitions` keeps, per detached
-- partition, each run: its first and last position, the hash before its
-- first row (entry) and the hash of its last row (exit). The audit walks
-- the rows still there and crosses each gap only along recorded runs whose
-- entry hash is the hash it has reached: a row deleted next to a detached
-- run is still found. The export file carries every row with its encoded
-- content, and is verified offline from the same runs
-- (`lienthong retention verify FILE`).
--
-- The conversion copies every row once (bodies included), under an
-- exclusive lock: plan the migration's time on a large database
-- (docs/performance.md gives the figure measured here).

-- The month partitions of `parent`, created when missing, with the
-- append-only truncate refusal of their parent (a TRUNCATE trigger of a
-- partitioned table does not fire for a partition truncated by name).
CREATE FUNCTION record_partition_create(parent text, month date) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    name text := parent || '_' || to_char(first_day, 'YYYY_MM');
BEGIN
    IF parent NOT IN ('messages', 'events', 'gateway_mailbox') THEN
        RAISE EXCEPTION 'table % is not partitioned by month', parent;
    END IF;
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
            name, parent,
            first_day::timestamp AT TIME ZONE 'UTC',
            (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC'
        );
    EXCEPTION WHEN check_violation THEN
        RAISE EXCEPTION 'cannot create partition % : %_default holds rows of that month', name, parent
            USING HINT = 'the partitions were not created ahead (lienthong retention run creates them); '
                         'see docs/operations.md, "Partitions"';
    END;
    IF parent <> 'gateway_mailbox' THEN
        EXECUTE format(
            'CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change()', name
        );
    END IF;
    RETURN true;
END
$$;

-- This month's partitions and the next `months_ahead` months', for every
-- partitioned table of the record; returns the names created.
CREATE FUNCTION record_partitions_ensure(months_ahead integer) RETURNS SETOF text
LANGUAGE plpgsql
AS $$
DECLARE
    parent text;
    month date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['messages', 'events', 'gateway_mailbox'] LOOP
        FOR month IN
            SELECT generate_series(
                date_trunc('month', now() AT TIME ZONE 'UTC'),
                date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => months_ahead),
                interval '1 month'
            )::date
        LOOP
            IF record_partition_create(parent, month) THEN
                RETURN NEXT parent || '_' || to_char(month, 'YYYY_MM');
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- The definitions of the functions over the rows of the two tables (the
-- canonical encoding, chain_content and chain_content_tail, as the earlier
-- migrations left it), to create them again over the new tables' rows.
CREATE TEMPORARY TABLE row_functions ON COMMIT DROP AS
SELECT p.oid, pg_get_functiondef(p.oid) AS definition
FROM pg_proc p
WHERE p.pronamespace = current_schema()::regnamespace
  AND EXISTS (
      SELECT FROM unnest(p.proargtypes) AS t(oid)
      WHERE t.oid IN ('messages'::regtype, 'events'::regtype)
  );

-- The properties of the seal's trigger functions (a later owner may have
-- made them SECURITY DEFINER with a pinned search path), to keep them.
CREATE TEMPORARY TABLE kept_properties ON COMMIT DROP AS
SELECT p.proname, p.prosecdef, p.proconfig
FROM pg_proc p
WHERE p.pronamespace = current_schema()::regnamespace
  AND p.proname IN ('chain_unsealed', 'chain_seal', 'refuse_history_change');

-- The privileges on the two tables, to give the new ones the same.
CREATE TEMPORARY TABLE kept_grants ON COMMIT DROP AS
SELECT c.relname, a.grantee, a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid IN ('messages'::regclass, 'events'::regclass, 'gateway_mailbox'::regclass)
  AND a.grantee <> c.relowner;

ALTER TABLE messages RENAME TO messages_unpartitioned;
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE gateway_mailbox RENAME TO gateway_mailbox_unpartitioned;

-- Same columns (whatever migrations added), defaults, CHECK constraints and storage.
CREATE TABLE messages (
    LIKE messages_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
        INCLUDING IDENTITY
) PARTITION BY RANGE (received_at);
CREATE TABLE events (
    LIKE events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
        INCLUDING IDENTITY
) PARTITION BY RANGE (recorded_at);
-- The gateway's mailbox (0009) grows with every item handed out, and an
-- item confirmed long ago is a copy of a message the record holds: by
-- month of arrival too, and `retention run` drops a month whose items are
-- all confirmed (without an export: they are copies).
CREATE TABLE gateway_mailbox (
    LIKE gateway_mailbox_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
        INCLUDING STORAGE INCLUDING IDENTITY
) PARTITION BY RANGE (received_at);
CREATE TABLE gateway_mailbox_default PARTITION OF gateway_mailbox DEFAULT;
CREATE TABLE messages_default PARTITION OF messages DEFAULT;
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON messages_default
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON events_default
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

-- A partition for every month with rows, and this month's and three more.
SELECT record_partition_create('messages', month::date)
FROM generate_series(
    date_trunc('month', (SELECT min(received_at) FROM messages_unpartitioned) AT TIME ZONE 'UTC'),
    date_trunc('month', now() AT TIME ZONE 'UTC'),
    interval '1 month'
) AS month;
SELECT record_partition_create('events', month::date)
FROM generate_series(
    date_trunc('month', (SELECT min(recorded_at) FROM events_unpartitioned) AT TIME ZONE 'UTC'),
    date_trunc('month', now() AT TIME ZONE 'UTC'),
    interval '1 month'
) AS month;
SELECT record_partition_create('gateway_mailbox', month::date)
FROM generate_series(
    date_trunc('month', (SELECT min(received_at) FROM gateway_mailbox_unpartitioned) AT TIME ZONE 'UTC'),
    date_trunc('month', now() AT TIME ZONE 'UTC'),
    interval '1 month'
) AS month;
SELECT record_partitions_ensure(3);

-- Copy every row as it is (no trigger is on the new tables yet), with the
-- column lists of the catalog so that any column a migration added comes along.
DO $$
DECLARE
    source text;
    target text;
    columns text;
BEGIN
    FOREACH target IN ARRAY ARRAY['messages', 'events', 'gateway_mailbox'] LOOP
        source := target || '_unpartitioned';
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns
        FROM pg_attribute
        WHERE attrelid = source::regclass AND attnum > 0 AND NOT attisdropped;
        EXECUTE format(
            'INSERT INTO %I (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %I ORDER BY id',
            target, columns, columns, source
        );
        -- The identity goes on from where the old table's was.
        EXECUTE format(
            'SELECT setval(pg_get_serial_sequence(%L, ''id''), last_value, is_called) FROM %s',
            target, pg_get_serial_sequence(source, 'id')
        );
    END LOOP;
END
$$;

CREATE TABLE message_keys (
    dedup_key   text PRIMARY KEY,
    message_pk  bigint NOT NULL CONSTRAINT message_key_pk_unique UNIQUE,
    -- The partition key of the message: where to find it.
    received_at timestamptz NOT NULL
);
INSERT INTO message_keys (dedup_key, message_pk, received_at)
SELECT dedup_key, id, received_at FROM messages_unpartitioned;

CREATE TABLE event_keys (
    message_pk  bigint NOT NULL,
    delivery_pk bigint NOT NULL,
    kind        text NOT NULL,
    event_pk    bigint NOT NULL CONSTRAINT event_key_pk_unique UNIQUE,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (message_pk, delivery_pk, kind)
);
INSERT INTO event_keys (message_pk, delivery_pk, kind, event_pk, recorded_at)
SELECT message_pk, delivery_pk, kind, id, recorded_at FROM events_unpartitioned;

-- A mailbox item once per (queue, AMQP message id), a docId once.
CREATE TABLE mailbox_keys (
    queue       text NOT NULL,
    message_id  text NOT NULL,
    doc_id      text NOT NULL CONSTRAINT mailbox_key_doc_id_unique UNIQUE,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (queue, message_id)
);
INSERT INTO mailbox_keys (queue, message_id, doc_id, received_at)
SELECT queue, message_id, doc_id, received_at FROM gateway_mailbox_unpartitioned;

-- Foreign keys that named the old tables' ids name the key tables.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT c.conname, c.conrelid::regclass AS referencing, a.attname,
               CASE c.confrelid WHEN 'messages_unpartitioned'::regclass
                    THEN 'message_keys (message_pk)' ELSE 'event_keys (event_pk)' END AS target
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f'
          AND c.confrelid IN ('messages_unpartitioned'::regclass, 'events_unpartitioned'::regclass)
          AND c.conrelid NOT IN ('messages_unpartitioned'::regclass, 'events_unpartitioned'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.referencing, fk.conname);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) REFERENCES %s',
                       fk.referencing, fk.conname, fk.attname, fk.target);
    END LOOP;
END
$$;

-- The old tables go, with the functions over their rows; the same
-- functions are made again over the new tables' rows.
DROP TABLE messages_unpartitioned, events_unpartitioned, gateway_mailbox_unpartitioned CASCADE;
ALTER TABLE gateway_mailbox ADD CONSTRAINT gateway_mailbox_pkey PRIMARY KEY (id, received_at);
ALTER TABLE gateway_mailbox ADD CONSTRAINT gateway_mailbox_agency_fkey
    FOREIGN KEY (agency) REFERENCES agencies (code);
CREATE INDEX gateway_mailbox_doc_id ON gateway_mailbox (doc_id);
CREATE INDEX gateway_mailbox_once ON gateway_mailbox (queue, message_id);
CREATE INDEX gateway_mailbox_open ON gateway_mailbox (agency, message_type, id) WHERE state <> 'done';
DO $$
DECLARE
    definition text;
BEGIN
    FOR definition IN SELECT r.definition FROM row_functions r ORDER BY r.oid LOOP
        EXECUTE definition;
    END LOOP;
END
$$;

ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (id, received_at);
CREATE INDEX messages_dedup_key ON messages (dedup_key);
CREATE INDEX messages_amqp_message_id ON messages (amqp_message_id);
CREATE INDEX messages_received_at ON messages (received_at);
CREATE INDEX messages_chain_seq ON messages (chain_seq);

ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id, recorded_at);
ALTER TABLE events ADD CONSTRAINT events_delivery_pk_fkey FOREIGN KEY (delivery_pk) REFERENCES deliveries (id);
ALTER TABLE events ADD CONSTRAINT events_message_pk_fkey FOREIGN KEY (message_pk) REFERENCES message_keys (message_pk);
CREATE INDEX events_delivery_at ON events (delivery_pk, at, id);
CREATE INDEX events_message ON events (message_pk, delivery_pk, kind);
CREATE INDEX events_chain_seq ON events (chain_seq);

-- The name of the chain a row of `relation` belongs to: its partitioned
-- table's name for a partition, its own otherwise.
CREATE FUNCTION chain_of(relation oid) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT relname::text FROM pg_class WHERE oid = coalesce(pg_partition_root(relation), relation) $$;

-- 0007's, with the chain named by chain_of.
CREATE OR REPLACE FUNCTION chain_unsealed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    recent text := 'lienthong.unsealed_' || chain_of(TG_RELID);
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

CREATE OR REPLACE FUNCTION chain_seal() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    saved_timeout text;
    chain text := chain_of(TG_RELID);
BEGIN
    IF chain_noted(chain, NULL) IS NULL THEN
        -- Sealed already, unless the noted ids were lost: then seal it now.
        IF chain = 'messages' THEN
            PERFORM 1 FROM messages WHERE id = NEW.id AND chain_hash IS NULL;
        ELSIF chain = 'documents' THEN
            PERFORM 1 FROM documents WHERE id = NEW.id AND chain_hash IS NULL;
        ELSE
            PERFORM 1 FROM events WHERE id = NEW.id AND chain_hash IS NULL;
        END IF;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    saved_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', chain_lock_wait(), true);
    PERFORM pg_advisory_xact_lock(chain_lock_key());
    PERFORM set_config('lock_timeout', saved_timeout, true);
    PERFORM chain_seal_all(chain, NEW.id);
    RETURN NULL;
END
$$;

-- 0006's, naming the partitioned table rather than the partition.
CREATE OR REPLACE FUNCTION refuse_history_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    chain text := chain_of(TG_RELID);
BEGIN
    IF TG_LEVEL = 'ROW' AND TG_OP = 'UPDATE' AND OLD.chain_seq IS NULL
       AND NEW.chain_seq IS NOT NULL AND pg_trigger_depth() > 1 THEN
        RETURN NEW;
    END IF;
    IF TG_LEVEL = 'STATEMENT' THEN
        RAISE EXCEPTION 'table % is append-only history: % refused', chain, TG_OP
            USING ERRCODE = 'restrict_violation',
                  HINT = 'history is never changed; mutable state lives in message_state, deliveries and agencies';
    END IF;
    RAISE EXCEPTION 'table % is append-only history: % of row id % refused', chain, TG_OP, OLD.id
        USING ERRCODE = 'restrict_violation',
              HINT = 'history is never changed; mutable state lives in message_state, deliveries and agencies';
END
$$;

DO $$
DECLARE
    kept record;
    setting text;
BEGIN
    FOR kept IN SELECT * FROM kept_properties LOOP
        IF kept.prosecdef THEN
            EXECUTE format('ALTER FUNCTION %I() SECURITY DEFINER', kept.proname);
        END IF;
        FOREACH setting IN ARRAY coalesce(kept.proconfig, '{}') LOOP
            EXECUTE format('ALTER FUNCTION %I() SET %I = %s', kept.proname,
                           split_part(setting, '=', 1), substr(setting, strpos(setting, '=') + 1));
        END LOOP;
    END LOOP;
END
$$;

-- BEFORE INSERT: claim the row's key; a key taken already skips the row.
CREATE FUNCTION message_key_claim() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO message_keys (dedup_key, message_pk, received_at)
    VALUES (NEW.dedup_key, NEW.id, NEW.received_at)
    ON CONFLICT (dedup_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION event_key_claim() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO event_keys (message_pk, delivery_pk, kind, event_pk, recorded_at)
    VALUES (NEW.message_pk, NEW.delivery_pk, NEW.kind, NEW.id, NEW.recorded_at)
    ON CONFLICT (message_pk, delivery_pk, kind) DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

-- A docId taken already is an error, as the unique key of 0009 made it.
CREATE FUNCTION mailbox_key_claim() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO mailbox_keys (queue, message_id, doc_id, received_at)
    VALUES (NEW.queue, NEW.message_id, NEW.doc_id, NEW.received_at)
    ON CONFLICT (queue, message_id) DO NOTHING;
    IF NOT FOUND THEN
        -- The same item (its docId, which the gateway draws anew for every
        -- insert) is moving to another month's partition: an UPDATE of
        -- received_at deletes it from one and inserts it into the other.
        PERFORM FROM mailbox_keys k
        WHERE k.queue = NEW.queue AND k.message_id = NEW.message_id AND k.doc_id = NEW.doc_id;
        IF FOUND THEN
            RETURN NEW;
        END IF;
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION mailbox_key_claim() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION message_key_claim() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION event_key_claim() SET search_path = %I, pg_temp', current_schema());
END
$$;

-- Triggers fire in the order of their names: the key is claimed first.
CREATE TRIGGER a_claim_key BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION message_key_claim();
CREATE TRIGGER chain_unsealed BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION chain_unsealed();
CREATE CONSTRAINT TRIGGER chain_seal AFTER INSERT ON messages
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_seal();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER a_claim_key BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION event_key_claim();
CREATE TRIGGER chain_unsealed BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chain_unsealed();
CREATE CONSTRAINT TRIGGER chain_seal AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chain_seal();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

CREATE TRIGGER a_claim_key BEFORE INSERT ON gateway_mailbox
    FOR EACH ROW EXECUTE FUNCTION mailbox_key_claim();

-- Key tables: append-only too, written by the claim triggers only.
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON message_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_seal_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON event_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_seal_change();

-- The detached partitions and their runs of positions (see above).
CREATE TABLE detached_partitions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain        text NOT NULL CONSTRAINT detached_partition_chain CHECK (chain IN ('messages', 'events')),
    partition    text NOT NULL CONSTRAINT detached_partition_once UNIQUE,
    month        date NOT NULL,
    rows         bigint NOT NULL,
    -- [{"first": n, "last": n, "entry": hash before first, "exit": hash of last}, ...]
    runs         jsonb NOT NULL,
    -- The highest position the partition held, and its hash.
    last_seq     bigint,
    last_hash    text,
    -- The export: its file name, size and SHA-256.
    export_file  text NOT NULL,
    export_bytes bigint NOT NULL,
    export_sha256 text NOT NULL,
    -- Kept as a standalone table (renamed <partition>_detached) or dropped.
    dropped      boolean NOT NULL,
    detached_at  timestamptz NOT NULL DEFAULT now(),
    detached_by  text NOT NULL DEFAULT session_user
);
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON detached_partitions
    FOR EACH ROW EXECUTE FUNCTION refuse_seal_change();

-- The same privileges as the old tables; nobody but the owner writes the
-- key tables or the record of detached partitions.
DO $$
DECLARE
    grant_row record;
    role_name text;
BEGIN
    FOR role_name IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid IN ('messages'::regclass, 'events'::regclass, 'gateway_mailbox'::regclass)
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('REVOKE ALL ON messages, events, gateway_mailbox FROM %s', role_name);
    END LOOP;
    FOR grant_row IN SELECT * FROM kept_grants LOOP
        EXECUTE format('GRANT %s ON %I TO %s', grant_row.privilege_type, grant_row.relname,
                       CASE WHEN grant_row.grantee = 0 THEN 'PUBLIC'
                            ELSE grant_row.grantee::regrole::text END);
    END LOOP;
    FOR role_name IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid IN ('message_keys'::regclass, 'event_keys'::regclass,
                        'mailbox_keys'::regclass, 'detached_partitions'::regclass)
          AND a.grantee <> c.relowner AND a.grantee <> 0 AND a.privilege_type <> 'SELECT'
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON message_keys, event_keys, '
                       'mailbox_keys, detached_partitions FROM %s', role_name);
    END LOOP;
END
$$;

-- `lienthong report`: whether each agency sent or received in the period,
-- one index probe each instead of a scan of its documents or deliveries.
CREATE INDEX documents_sender_created ON documents (sender, created_at);
CREATE INDEX deliveries_recipient_delivered ON deliveries (recipient, delivered_at);
