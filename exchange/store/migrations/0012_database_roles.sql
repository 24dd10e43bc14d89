-- 0012: database roles. The schema belongs to one owner; workers and gateways
-- log in as roles that may do their work and nothing else.
--
-- The owner is the role that applies the migrations (`lienthong init`, with
-- LIENTHONG_OWNER_DATABASE_URL): it creates, and so owns, every table and
-- function. Two group roles (NOLOGIN) hold what the processes may do; the
-- login roles of workers and gateways are members of one of them
-- (`lienthong init --create-login NAME --group worker|gateway`), so granting
-- a new worker its rights is one membership:
--
--   lienthong_worker   reads every table (but the gateway systems' secrets);
--                      appends to the record, messages, documents and events
--                      (INSERT only: no UPDATE, DELETE or TRUNCATE, so a
--                      worker's login cannot rewrite history even where the
--                      append-only triggers of 0002 would be bypassed);
--                      inserts and updates the state it keeps:
--                      message_state, deliveries, processing_starts.
--   lienthong_gateway  reads the directory and the record (getSentEdocList
--                      reports from it), writes nothing of either; keeps its
--                      submissions (insert, delete), its mailbox (insert,
--                      update) and each system's last contact (the column
--                      last_seen_at only: a gateway cannot enable a system
--                      or change a secret).
--
-- Neither may create, alter or drop anything, nor truncate. The directory
-- (agencies, certificates, gateway systems) and the record of replays are
-- written by the operators' commands, under roles of their own.
--
-- The chains are sealed at commit by a trigger (0006, 0007) that updates the
-- rows just inserted and chain_heads: it runs as the owner (SECURITY
-- DEFINER, with the search path pinned to this schema), so a worker needs no
-- UPDATE right on history for it; chain_seal_all, which it calls, may be
-- called by nobody else.
--
-- Tables created by later migrations (default privileges of the owner) can
-- be read by both groups and appended to by the workers: the safe default of
-- a record that only grows; an UPDATE or DELETE right, a migration grants
-- explicitly. tests/integration/test_database_roles.py holds the
-- whole matrix: a new table fails it until it is given its line.
--
-- Roles belong to the whole PostgreSQL cluster, not to one database: the
-- groups are created here when missing (the owner needs CREATEROLE for it;
-- otherwise a superuser creates them first, `lienthong init --roles-sql`),
-- and every lienthong database of the cluster grants to the same groups.

DO $$
DECLARE
    group_role text;
BEGIN
    FOREACH group_role IN ARRAY ARRAY['lienthong_worker', 'lienthong_gateway'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = group_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', group_role);
            EXCEPTION
                -- Another database of the cluster migrating at the same moment.
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % does not exist and % may not create roles', group_role, current_user
                        USING ERRCODE = 'insufficient_privilege',
                              HINT = 'have a superuser run the SQL of `lienthong init --roles-sql`, then run lienthong init again';
            END;
        END IF;
    END LOOP;
END
$$;

-- Only the owner creates in the schema. PostgreSQL before 15 lets everyone
-- create in `public`; this takes it back where the owner owns the schema
-- (elsewhere its owner must: the workers refuse to start off this host with
-- a role that may create there).
DO $$
BEGIN
    IF has_schema_privilege('public', current_schema(), 'CREATE')
       AND pg_has_role((SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'USAGE') THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO lienthong_worker, lienthong_gateway', current_schema());
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT ON TABLES TO lienthong_worker',
        current_schema()
    );
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO lienthong_gateway',
        current_schema()
    );
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO lienthong_worker, lienthong_gateway',
        current_schema()
    );
    -- The seal runs as the owner; its search path cannot be redirected by
    -- the caller's (pg_temp last: no temporary object shadows a table).
    EXECUTE format('ALTER FUNCTION chain_seal() SET search_path = %I, pg_temp', current_schema());
END
$$;

ALTER FUNCTION chain_seal() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION chain_seal_all(text, bigint) FROM PUBLIC;

-- The workers.
GRANT SELECT, INSERT ON messages, documents, events TO lienthong_worker;
GRANT SELECT, INSERT, UPDATE ON message_state, deliveries, processing_starts TO lienthong_worker;
GRANT SELECT ON agencies, agency_certificates, chain_heads, schema_migrations,
                replays, replay_items, gateway_system_agencies, gateway_submissions,
                gateway_mailbox
    TO lienthong_worker;
-- The directory figures count the agencies an enabled system acts for; the
-- secrets are none of a worker's business.
GRANT SELECT (system_id, enabled, created_at, secret_set_at, last_seen_at) ON gateway_systems
    TO lienthong_worker;

-- The gateways.
GRANT SELECT ON agencies, agency_certificates, schema_migrations, messages, message_state,
                documents, deliveries, events, gateway_system_agencies
    TO lienthong_gateway;
GRANT SELECT ON gateway_systems TO lienthong_gateway;
GRANT UPDATE (last_seen_at) ON gateway_systems TO lienthong_gateway;
GRANT SELECT, INSERT, DELETE ON gateway_submissions TO lienthong_gateway;
GRANT SELECT, INSERT, UPDATE ON gateway_mailbox TO lienthong_gateway;
