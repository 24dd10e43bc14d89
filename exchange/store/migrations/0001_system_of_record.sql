-- 0001: the system of record of the exchange (issue 3).
--
-- What may change and what may not
-- ---------------------------------
-- History, written once and never updated or deleted (issue 4 hash-chains
-- these tables and adds triggers that forbid UPDATE and DELETE on them; no
-- query of the exchange needs to change a row here):
--   messages    every message received, exactly as received: its bytes,
--               their SHA-256, who published it and under which routing key;
--   documents   the document a message carried, as first accepted;
--   events      the history of receipts and business statuses per delivery.
-- State, small rows meant to be updated (these are the ONLY mutable rows):
--   message_state  one row per message: what the exchange made of it
--                  (kind, authenticated sender, outcome and reason, the
--                  document, attempts) and published_at, the outbox flag;
--   deliveries     one row per (document, recipient): its current business
--                  state, always the fold of its status events;
--   agencies       the directory (certificates get renewed).
--
-- Exactly-once effect: a message is identified by dedup_key (the SHA-256 of
-- its routing key and body), a document by (sender, document_id), a delivery
-- by (document, recipient), an event by (message, delivery, kind). Every
-- insert of the exchange goes through one of these unique keys with
-- ON CONFLICT DO NOTHING, so processing a message twice adds nothing.
--
-- Code lists are CHECKed here with the values of exchange/status.py (a test
-- compares the two). Reason codes are only checked for their shape: issue 4
-- adds new ones (transient failures) without a migration.

CREATE TABLE agencies (
    code            text PRIMARY KEY
                    CONSTRAINT agency_code_format
                    CHECK (code ~ '^[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}$'),
    name            text NOT NULL CONSTRAINT agency_name_present CHECK (btrim(name) <> ''),
    -- Not a foreign key: an agency may join the exchange before its parent
    -- does (a district of a province that is not connected yet).
    parent          text
                    CONSTRAINT agency_parent_format
                    CHECK (parent ~ '^[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}$'),
    level           smallint NOT NULL CONSTRAINT agency_level_range CHECK (level BETWEEN 1 AND 4),
    -- The RabbitMQ user whose AMQP user_id identifies this agency's messages.
    broker_user     text NOT NULL UNIQUE CONSTRAINT agency_broker_user_present
                    CHECK (broker_user <> ''),
    certificate_pem text,
    -- Topic patterns of four words ('*' or a literal) the agency's inbox is
    -- also bound with, for example '*.*.*.H26' for a provincial axis.
    subscriptions   text[] NOT NULL DEFAULT '{}'
                    CONSTRAINT agency_subscription_format
                    CHECK (array_to_string(subscriptions, ',')
                           ~ '^([^.,]+\.[^.,]+\.[^.,]+\.[^.,]+(,[^.,]+\.[^.,]+\.[^.,]+\.[^.,]+)*)?$'),
    registered_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- SHA-256 of the routing key and the body: a redelivery, or a re-publish
    -- of the same bytes to the same recipient, is the same message.
    dedup_key       text NOT NULL
                    CONSTRAINT message_dedup_key_unique UNIQUE
                    CONSTRAINT message_dedup_key_format CHECK (dedup_key ~ '^[0-9a-f]{64}$'),
    amqp_message_id text,
    routing_key     text NOT NULL,
    -- AMQP user_id, validated by RabbitMQ; NULL when the publisher did not set it.
    broker_user     text,
    body            bytea NOT NULL,
    -- The recorded hash is the hash of the recorded bytes, checked by the
    -- database itself so no code path can store one without the other.
    sha256          text NOT NULL
                    CONSTRAINT message_sha256_matches_body
                    CHECK (sha256 = encode(sha256(body), 'hex')),
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_amqp_message_id ON messages (amqp_message_id);
CREATE INDEX messages_received_at ON messages (received_at);

CREATE TABLE documents (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender            text NOT NULL REFERENCES agencies (code),
    -- DocumentId, or the one derived from the convention
    -- "<sender>,<yyyy/MM/dd>,<CodeNumber>/<CodeNotation>" when absent.
    document_id       text NOT NULL CONSTRAINT document_id_present CHECK (btrim(document_id) <> ''),
    -- SHA-256 of the package as first accepted: the same id with another
    -- hash is a different document under a reused id (DUPLICATE_DOCUMENT).
    sha256            text NOT NULL CONSTRAINT document_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    code_number       text,
    code_notation     text,
    subject           text,
    promulgation_date date,
    due_date          date,
    doc_type          text NOT NULL DEFAULT '0'
                      CONSTRAINT document_doc_type_code CHECK (doc_type IN ('0', '1', '2', '3')),
    priority          text CONSTRAINT document_priority_code CHECK (priority IN ('0', '1', '2', '3', '4')),
    first_message_pk  bigint NOT NULL REFERENCES messages (id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT document_unique_per_sender UNIQUE (sender, document_id)
);
-- trace DOCUMENT looks a document up by its id alone.
CREATE INDEX documents_document_id ON documents (document_id);

CREATE TABLE message_state (
    message_pk      bigint PRIMARY KEY REFERENCES messages (id),
    kind            text NOT NULL DEFAULT 'unknown'
                    CONSTRAINT message_kind_code CHECK (kind IN ('document', 'status', 'unknown')),
    -- The agency the exchange authenticated as the publisher; NULL until then.
    sender          text REFERENCES agencies (code),
    -- NULL while the message is being processed (or waits in a retry queue).
    outcome         text
                    CONSTRAINT message_outcome_code
                    CHECK (outcome IN ('accepted', 'delivered', 'rejected', 'parked')),
    reason_code     text CONSTRAINT message_reason_code_format CHECK (reason_code ~ '^[A-Z][A-Z0-9_]*$'),
    reason_detail   text,
    document_pk     bigint REFERENCES documents (id),
    -- The DocumentId the package carried (or the conventional one derived
    -- from it), kept for rejected messages too: the clerk's receipt names it.
    document_id     text,
    attempts        integer NOT NULL DEFAULT 1 CONSTRAINT message_attempts_positive CHECK (attempts >= 1),
    -- The outbox flag: every side effect of the outcome (delivery, receipt,
    -- forwarded status) was published and confirmed by the broker.
    published_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- A refusal always says why; a success never carries a reason. An
    -- undecided message may carry the reason of its last transient failure.
    CONSTRAINT message_reason_iff_refused
    CHECK (outcome IS NULL OR (outcome IN ('rejected', 'parked')) = (reason_code IS NOT NULL)),
    CONSTRAINT message_published_only_when_decided
    CHECK (published_at IS NULL OR outcome IS NOT NULL)
);
CREATE INDEX message_state_sender ON message_state (sender);
CREATE INDEX message_state_document ON message_state (document_pk);
-- The replay tool lists refused messages; the outbox sweep finds decided but
-- unpublished ones. Both sets are small, so partial indexes.
CREATE INDEX message_state_refused ON message_state (outcome, reason_code)
    WHERE outcome IN ('rejected', 'parked');
CREATE INDEX message_state_unpublished ON message_state (message_pk)
    WHERE outcome IS NOT NULL AND published_at IS NULL;

CREATE TABLE deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_pk     bigint NOT NULL REFERENCES documents (id),
    recipient       text NOT NULL REFERENCES agencies (code),
    -- The message that carried the document to this recipient.
    message_pk      bigint NOT NULL REFERENCES messages (id),
    -- Latest business status of the normal flow (01..06); NULL before the
    -- recipient reported anything. 13, 15 and 16 show in the flags below.
    state           text CONSTRAINT delivery_state_code
                    CHECK (state IN ('01', '02', '03', '04', '05', '06')),
    recall_pending  boolean NOT NULL DEFAULT false,
    withdrawn       boolean NOT NULL DEFAULT false,
    -- When the package was confirmed in the recipient's inbox.
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_unique_per_recipient UNIQUE (document_pk, recipient),
    CONSTRAINT delivery_recall_answered_once CHECK (NOT (recall_pending AND withdrawn))
);
CREATE INDEX deliveries_recipient ON deliveries (recipient);
CREATE INDEX deliveries_message ON deliveries (message_pk);

CREATE TABLE events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_pk     bigint NOT NULL REFERENCES deliveries (id),
    -- The message that caused the event: the document message for a receipt,
    -- the status package for a status.
    message_pk      bigint NOT NULL REFERENCES messages (id),
    kind            text NOT NULL CONSTRAINT event_kind_code CHECK (kind IN ('receipt', 'status')),
    -- A transport outcome for a receipt, a business StatusCode for a status:
    -- two vocabularies, never mixed.
    code            text NOT NULL,
    reason_code     text CONSTRAINT event_reason_code_format CHECK (reason_code ~ '^[A-Z][A-Z0-9_]*$'),
    description     text,
    -- When it happened: the status package's Timestamp, or the receipt's time.
    at              timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_once_per_message UNIQUE (message_pk, delivery_pk, kind),
    CONSTRAINT event_code_in_its_vocabulary CHECK (
        (kind = 'receipt' AND code IN ('accepted', 'delivered', 'rejected', 'parked'))
        OR (kind = 'status' AND code IN ('01', '02', '03', '04', '05', '06', '13', '15', '16'))
    )
);
CREATE INDEX events_delivery_at ON events (delivery_pk, at, id);
