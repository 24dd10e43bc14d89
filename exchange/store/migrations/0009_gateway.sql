-- 0009: the gateway for systems that speak the national axis protocol (VXP
-- adapter, docs/gateway.md): the systems it authenticates, the agencies each
-- may act for, what it submitted for them, and their mailboxes.
--
-- None of these rows is history: a secret is rotated, a system disabled, a
-- mailbox item moves from pending to done. They are state, like
-- message_state and deliveries, and stay out of the hash chains (0002): what
-- the exchange decided about each package the gateway submits, and each
-- delivery it hands out, is recorded in `messages`, `documents` and `events`
-- like any other, chained there. A mailbox item is a copy of a message the
-- record already holds.

CREATE TABLE gateway_systems (
    -- The SDK's systemId (a QLVB installation, a provincial connection centre).
    system_id     text PRIMARY KEY
                  CONSTRAINT gateway_system_id_format CHECK (system_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    -- The shared secret itself, not a hash of it: verifying the SDK's
    -- HMAC-SHA256 needs the key. Readable by whoever reads this database;
    -- never logged, printed only when generated or rotated.
    secret        text NOT NULL CONSTRAINT gateway_secret_length CHECK (length(secret) >= 16),
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    secret_set_at timestamptz NOT NULL DEFAULT now(),
    -- The last authenticated request, at most a minute old (an alert names a
    -- system that stopped polling).
    last_seen_at  timestamptz
);

CREATE TABLE gateway_system_agencies (
    system_id text NOT NULL REFERENCES gateway_systems (system_id) ON DELETE CASCADE,
    agency    text NOT NULL REFERENCES agencies (code),
    PRIMARY KEY (system_id, agency)
);
CREATE INDEX gateway_system_agencies_agency ON gateway_system_agencies (agency);

-- One row per sendEdoc the gateway accepted: the DocId it replied with,
-- and the AMQP message ids of its one message per recipient
-- ("<doc_id>.<recipient>"), through which getSentEdocList finds the record.
CREATE TABLE gateway_submissions (
    doc_id            text PRIMARY KEY CONSTRAINT gateway_doc_id_format CHECK (doc_id ~ '^[0-9a-f]{24}$'),
    system_id         text NOT NULL REFERENCES gateway_systems (system_id),
    sender            text NOT NULL REFERENCES agencies (code),
    message_type      text NOT NULL CONSTRAINT gateway_submission_type CHECK (message_type IN ('edoc', 'status')),
    document_id       text NOT NULL,
    sha256            text NOT NULL CONSTRAINT gateway_submission_sha256 CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- The gateway signed the package with the agency's key (it came unsigned
    -- or with a placeholder signature).
    signed_by_gateway boolean NOT NULL,
    recipients        text[] NOT NULL,
    submitted_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_submissions_by_system ON gateway_submissions (system_id, message_type, submitted_at);

-- What the gateway took from an agency's inbox and status queues, until the
-- system confirms it (updateStatus done).
CREATE TABLE gateway_mailbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The docId handed to the system.
    doc_id       text NOT NULL UNIQUE CONSTRAINT gateway_mailbox_doc_id_format CHECK (doc_id ~ '^[0-9a-f]{24}$'),
    -- The queue it came from and its AMQP message id: a redelivery inserts nothing.
    queue        text NOT NULL,
    message_id   text NOT NULL,
    agency       text NOT NULL REFERENCES agencies (code),
    message_type text NOT NULL CONSTRAINT gateway_mailbox_type CHECK (message_type IN ('edoc', 'status')),
    -- document, status or receipt (x-lienthong-kind).
    kind         text NOT NULL,
    sender       text,
    recipient    text,
    document_id  text,
    content_type text,
    body         bytea NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CONSTRAINT gateway_mailbox_state CHECK (state IN ('pending', 'fetched', 'processing', 'done', 'fail')),
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- Listed to a poller: kept off the other pollers' lists until then.
    leased_until timestamptz,
    fetched_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    confirmed_at timestamptz,
    CONSTRAINT gateway_mailbox_once UNIQUE (queue, message_id)
);
ALTER TABLE gateway_mailbox ALTER COLUMN body SET STORAGE EXTERNAL;
-- What is still to hand out: the lists read only these rows.
CREATE INDEX gateway_mailbox_open ON gateway_mailbox (agency, message_type, id) WHERE state <> 'done';
