-- 0015: operators answer for what they do.
--
-- Every operator action that reads what agencies sent or changes who may
-- send (`replay run`, `replay show --body`, `trace`, `agency add/set/
-- disable/enable`, `agency cert add/remove`, `system add/...`, `audit
-- --seal`) leaves one row in `operator_actions`: when, the database role
-- that did it, what was asked (never a secret or a document's body) and
-- how it ended. The role is PostgreSQL's `session_user`, set by the
-- trigger below whatever the client sends: the role the operator logged
-- in as, which `SET ROLE` does not change and an environment variable
-- (LOGNAME) cannot fake. Operators therefore log in with personal roles,
-- members of `lienthong_operator` (docs/security.md).
--
-- The table is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE,
-- and the operators' role has no such right on it) and one more hash chain,
-- `operator_actions`, with the canonical encoding of 0002 and a head in
-- chain_heads: `lienthong audit --verify-chain` names a row changed or
-- deleted, and the seals (0014) cover this chain too. Operator actions are
-- rare, so a row is chained when it is inserted, under a lock of its own
-- (not the workers' chain lock), as 0002 chained every table.

CREATE TABLE operator_actions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    -- session_user, set by the trigger (see above).
    db_role      text NOT NULL,
    -- The client's address as the server saw it (NULL over a Unix socket).
    client_addr  inet,
    -- The command, e.g. 'replay run', 'agency add', 'audit --seal'.
    action       text NOT NULL CONSTRAINT operator_action_named CHECK (action <> ''),
    -- What was asked: codes, ids, filters, certificate fingerprints; never
    -- a password, a secret or a body.
    arguments    jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- done, refused, failed: <why>, read (recorded before anything is shown).
    outcome      text NOT NULL,
    chain_seq    bigint CONSTRAINT operator_action_chain_seq_unique UNIQUE,
    chain_hash   text
);
CREATE INDEX operator_actions_at ON operator_actions (at);

ALTER TABLE chain_heads
    DROP CONSTRAINT chain_head_chain_name,
    ADD CONSTRAINT chain_head_chain_name
        CHECK (chain IN ('messages', 'documents', 'events', 'operator_actions'));
INSERT INTO chain_heads (chain, seq, hash)
VALUES ('operator_actions', 0, chain_genesis('operator_actions'));

-- The canonical encoding of 0002 for this table.
CREATE FUNCTION chain_content(a operator_actions) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('chain_seq', a.chain_seq::text)
        || chain_field('id', a.id::text)
        || chain_field('at', extract(epoch FROM a.at)::text)
        || chain_field('db_role', a.db_role)
        || chain_field('client_addr', host(a.client_addr))
        || chain_field('action', a.action)
        || chain_field('arguments', a.arguments::text)
        || chain_field('outcome', a.outcome)
$$;

-- The lock key: the first eight bytes of SHA-256("lienthong.operator_actions").
CREATE FUNCTION operator_action_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT -85626855246087043::bigint $$;

-- BEFORE INSERT: who (session_user, the client's address) and the row's
-- position and hash. SECURITY DEFINER, so that an operator's role needs
-- only INSERT on the table, never a right on chain_heads.
CREATE FUNCTION operator_action_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
DECLARE
    saved_timeout text := current_setting('lock_timeout');
    head_seq bigint;
    head_hash text;
    last_seq bigint;
    last_hash text;
BEGIN
    NEW.db_role := session_user;
    NEW.client_addr := inet_client_addr();
    NEW.at := now();
    PERFORM set_config('lock_timeout', chain_lock_wait(), true);
    PERFORM pg_advisory_xact_lock(operator_action_lock_key());
    PERFORM set_config('lock_timeout', saved_timeout, true);
    SELECT seq, hash INTO head_seq, head_hash FROM chain_heads WHERE chain = 'operator_actions';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the hash chain of table operator_actions has no head in chain_heads'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'the row was removed behind the triggers'' back; run lienthong audit --verify-chain';
    END IF;
    SELECT chain_seq, chain_hash INTO last_seq, last_hash
    FROM operator_actions WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1;
    IF last_seq IS NOT NULL AND last_seq > head_seq THEN
        head_seq := last_seq;
        head_hash := last_hash;
    END IF;
    NEW.chain_seq := head_seq + 1;
    NEW.chain_hash := chain_link(head_hash, chain_content(NEW));
    RETURN NEW;
END
$$;

-- AFTER INSERT: move the head (trigger depth 2 for refuse_head_change).
CREATE FUNCTION operator_action_advance_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $$
BEGIN
    UPDATE chain_heads SET seq = NEW.chain_seq, hash = NEW.chain_hash, updated_at = now()
    WHERE chain = 'operator_actions' AND seq < NEW.chain_seq;
    RETURN NULL;
END
$$;

CREATE TRIGGER chain_extend BEFORE INSERT ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION operator_action_chain();
CREATE TRIGGER chain_advance_head AFTER INSERT ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION operator_action_advance_head();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON operator_actions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();

-- The operators' role. Cluster-wide (roles are), so it may exist already:
-- another database of the same server made it. The migrating role needs
-- CREATEROLE for the first one; without it a DBA runs
-- `CREATE ROLE lienthong_operator NOLOGIN` and the migration again.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lienthong_operator') THEN
        CREATE ROLE lienthong_operator NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- made meanwhile by a migration of another database
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'the role lienthong_operator does not exist and % may not create it', current_user
            USING HINT = 'as a superuser or a role with CREATEROLE: CREATE ROLE lienthong_operator NOLOGIN; then run lienthong init again';
END
$$;

-- What operators' commands read and change: everything but the history,
-- which they read and never write (the worker does), the operator log and
-- the seals, to which they only add. Tables created later by the role
-- running the migrations get the same rights; a later history table
-- revokes them in its own migration.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO lienthong_operator;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO lienthong_operator;
REVOKE INSERT, UPDATE, DELETE ON messages, documents, events, chain_heads, schema_migrations
    FROM lienthong_operator;
REVOKE UPDATE, DELETE ON operator_actions, head_seals FROM lienthong_operator;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO lienthong_operator;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO lienthong_operator;
