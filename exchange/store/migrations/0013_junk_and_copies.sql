-- 0013: junk costs little; subscription copies are recorded.
--
-- Junk: a message refused before its signature was verified (not XML, not
-- edXML, a signature that does not verify, a certificate not accepted, a
-- routing key that is no agency code) proves nothing about who sent it, so
-- keeping its whole body lets anyone fill the database. Such a row keeps
-- its first 65,536 bytes in `body`, its size as received in `body_size`,
-- and the SHA-256 of the whole body as received in `sha256` (the worker
-- hashes it before it cuts). `body_size` is NULL for every other row: its
-- `body` is the whole body, whose hash `sha256` is.
--
-- The record stays tamper-evident. A row with a body_size is hashed under a
-- second version of the canonical encoding of 0002: the fields of version
-- 1, in the same order and form, where `body` is the SHA-256 of the bytes
-- kept (computed from the bytes, by the seal and by the audit alike) and
-- `sha256` that of the whole body as received, followed by one more field,
--     body_size = its decimal digits.
-- A row without a body_size keeps version 1, unchanged. Changing the bytes
-- kept, the hash or the size, or removing or adding a body_size (which
-- switches the version), changes the row's chain hash, and
-- `lienthong audit --verify-chain` names the row.
--
-- The constraint that ties `sha256` to `body` (0001) admits a cut row:
-- its body no longer than 65,536 bytes and shorter than body_size. Rows
-- recorded before satisfied the stronger rule; NOT VALID spares the
-- migration hashing every body already stored (the rule binds every new
-- row all the same).

ALTER TABLE messages ADD COLUMN body_size bigint;

ALTER TABLE messages
    DROP CONSTRAINT message_sha256_matches_body,
    ADD CONSTRAINT message_sha256_matches_body CHECK (
        (body_size IS NULL AND sha256 = encode(sha256(body), 'hex'))
        OR (body_size IS NOT NULL
            AND octet_length(body) <= 65536
            AND body_size > octet_length(body)
            AND octet_length(sha256) = 64 AND sha256 !~ '[^0-9a-f]')
    ) NOT VALID;

-- Version 1 (0002) for rows without a body_size, version 2 (above) for the others.
CREATE OR REPLACE FUNCTION chain_content(m messages) RETURNS bytea
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
        || CASE WHEN m.body_size IS NULL THEN ''::bytea
                ELSE chain_field('body_size', m.body_size::text) END
$$;

-- The seal's form (0007): the body's hash from the sha256 column when the
-- body is whole (the CHECK above guarantees they agree), from the bytes
-- kept (at most 64 KiB) when it was cut.
CREATE OR REPLACE FUNCTION chain_content_tail(m messages) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT chain_field('id', m.id::text)
        || chain_field('dedup_key', m.dedup_key)
        || chain_field('amqp_message_id', m.amqp_message_id)
        || chain_field('routing_key', m.routing_key)
        || chain_field('broker_user', m.broker_user)
        || chain_field('body', CASE WHEN m.body_size IS NULL THEN m.sha256
                                    ELSE encode(sha256(m.body), 'hex') END)
        || chain_field('sha256', m.sha256)
        || chain_field('received_at', extract(epoch FROM m.received_at)::text)
        || CASE WHEN m.body_size IS NULL THEN ''::bytea
                ELSE chain_field('body_size', m.body_size::text) END
$$;

-- Subscription copies: an agency subscribed to a subtree (`agency set
-- --subscribe *.*.24.H44`) receives a copy of each document delivered to an
-- agency in it. The worker publishes each copy itself (the inbox is bound
-- to its own code only) and records it here, so `lienthong trace` shows
-- who received a copy. Append-only, like the history.
CREATE TABLE subscription_copies (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The document message whose copy it is (delivered to its recipient).
    message_pk   bigint NOT NULL REFERENCES messages (id),
    subscriber   text NOT NULL REFERENCES agencies (code),
    -- The subscription that matched the recipient's code.
    pattern      text NOT NULL,
    -- When the broker confirmed the copy.
    published_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscription_copy_once UNIQUE (message_pk, subscriber)
);
CREATE INDEX subscription_copies_subscriber ON subscription_copies (subscriber);

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON subscription_copies
    FOR EACH ROW EXECUTE FUNCTION refuse_history_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON subscription_copies
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_history_change();
