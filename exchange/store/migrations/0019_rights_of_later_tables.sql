-- What the worker and gateway groups (0012) may do with the tables of 0013,
-- 0016 and 0018, where the default (read and append) is not the answer.

-- A token bucket is a row the worker updates for every message it takes a
-- token for (exchange/store/queries.py, take_token); the gateway takes none.
GRANT SELECT, INSERT, UPDATE ON quota_buckets TO lienthong_worker;
REVOKE ALL ON quota_buckets FROM lienthong_gateway;

-- The key tables are written by the SECURITY DEFINER triggers that claim a
-- key, the retention bookkeeping by its owner: the groups read them only.
REVOKE INSERT, UPDATE, DELETE ON message_keys, event_keys, mailbox_keys, detached_partitions
    FROM lienthong_worker, lienthong_gateway;

-- A month partition is reached through its parent, whose rights PostgreSQL
-- checks; rights of their own on a partition (the default of a new table)
-- would let a worker append to the gateway's mailbox by naming the
-- partition. None, on those that exist and on those made later.
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_class c
        WHERE c.relispartition AND c.relkind = 'r'
          AND c.relnamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('REVOKE ALL ON %I FROM lienthong_worker, lienthong_gateway', part.relname);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION record_partition_create(parent text, month date) RETURNS boolean
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
    EXECUTE format('REVOKE ALL ON %I FROM lienthong_worker, lienthong_gateway', name);
    RETURN true;
END
$$;
