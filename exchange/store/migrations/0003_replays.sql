-- 0003: the record of replays (issue 4, point 3: `lienthong replay`).
--
-- Every replay an operator executes (a dry run changes nothing and is not
-- recorded) leaves one row in `replays`: who ran it (the OS user, the host
-- and the broker user that published), when, what was asked (the message
-- ids, --all, the filters, --from-queue) and, once it finished waiting, the
-- outcome counts. `replay_items` names each message it took and what became
-- of it, so `lienthong replay show ID` can tell a message's replay history.
--
-- A message is named by its dedup_key (the identity the worker records it
-- under): a message taken from the parked queue may have no row in
-- `messages` yet (parked while the database was down, or dead-lettered by
-- the broker as poison); message_pk is filled in once the worker records it.

CREATE TABLE replays (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    os_user      text NOT NULL,
    host         text NOT NULL,
    -- The broker user the replayed messages were published as (the workers
    -- believe the replay headers only from the exchange's own users).
    broker_user  text NOT NULL,
    -- What was asked, as given: {"ids": [...], "all": false, "from_queue":
    -- false, "filters": {...}}.
    selection    jsonb NOT NULL,
    -- running: publishing or waiting; finished: every replayed message has a
    -- new decision; incomplete: some were not decided before the timeout or
    -- could not be published; the row stays `running` if the tool died.
    state        text NOT NULL DEFAULT 'running'
                 CONSTRAINT replay_state_code CHECK (state IN ('running', 'finished', 'incomplete')),
    -- The outcome counts, e.g. {"delivered": 3, "rejected": {"REJECTED_X": 1}, ...}.
    result       jsonb,
    CONSTRAINT replay_finished_with_result
    CHECK ((state = 'running') = (finished_at IS NULL) AND (state = 'running') = (result IS NULL))
);
CREATE INDEX replays_started_at ON replays (started_at);

CREATE TABLE replay_items (
    replay_pk       bigint NOT NULL REFERENCES replays (id),
    dedup_key       text NOT NULL
                    CONSTRAINT replay_item_dedup_key_format CHECK (dedup_key ~ '^[0-9a-f]{64}$'),
    message_pk      bigint REFERENCES messages (id),
    -- Where the bytes came from: the recorded message, or lienthong.parked.
    source          text NOT NULL
                    CONSTRAINT replay_item_source_code CHECK (source IN ('database', 'parked_queue')),
    -- planned: about to be published; published: confirmed into lienthong.work;
    -- failed: the broker did not take it; skipped: not replayed (see note);
    -- removed: a stale parked copy of a delivered message, taken off the queue.
    action          text NOT NULL
                    CONSTRAINT replay_item_action_code
                    CHECK (action IN ('planned', 'published', 'failed', 'skipped', 'removed')),
    note            text,
    outcome_before  text,
    reason_before   text,
    -- The new decision the replay led to; NULL while pending (or never).
    outcome_after   text,
    reason_after    text,
    decided_at      timestamptz,
    PRIMARY KEY (replay_pk, dedup_key)
);
CREATE INDEX replay_items_message ON replay_items (message_pk);
CREATE INDEX replay_items_dedup_key ON replay_items (dedup_key);
