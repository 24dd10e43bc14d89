-- 0014: the chains' heads, signed and timestamped (anchored history).
--
-- The hash chains (0002, 0006, 0007) show any row changed or deleted behind
-- the exchange's back, except one thing: someone with superuser rights can
-- disable the triggers and rewrite a whole chain consistently, heads
-- included. A seal closes that gap. At an interval (the workers, setting
-- LIENTHONG_SEAL_INTERVAL_S) and on demand (`lienthong audit --seal`) the
-- current head of every chain (position and hash) is written into a
-- payload which is signed with the exchange's sealing key
-- (LIENTHONG_SEAL_KEY, a file on the exchange's hosts that the database
-- never holds) and, when a time-stamp authority is configured
-- (LIENTHONG_TSA_URL), time-stamped by it (RFC 3161). `lienthong audit
-- --verify-chain` checks each seal's signature against the sealing
-- certificate it is given (LIENTHONG_SEAL_CERT, not the one stored here)
-- and that the chain still has the sealed hash at the sealed position: a
-- chain rewritten from some row on no longer has it, and the seals say
-- which chain, from which seal on, and since when.
--
-- The seals themselves are a chain: each payload names its number and the
-- SHA-256 of the previous seal (its payload and signature), so a seal
-- deleted between two others is found. The payload is stored as the exact
-- text that was signed; its fields are repeated in columns only to be read.
--
-- Append-only like the history (the trigger below); nothing the exchange
-- does changes a seal after it is written.

CREATE TABLE head_seals (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 1, 2, 3, ... as written in the payload.
    number       bigint NOT NULL CONSTRAINT head_seal_number_unique UNIQUE
                 CONSTRAINT head_seal_number_positive CHECK (number >= 1),
    sealed_at    timestamptz NOT NULL,
    -- The signed text: canonical JSON (keys sorted, no spaces), UTF-8.
    payload      text NOT NULL,
    -- The signature of the payload's bytes, and how it was made
    -- (rsa-pkcs1v15-sha256, ecdsa-sha256, ed25519).
    signature    bytea NOT NULL,
    algorithm    text NOT NULL,
    -- The sealing certificate (PEM), for the reader; the verifier trusts
    -- only the certificate it is given.
    certificate  text NOT NULL,
    -- The RFC 3161 time-stamp token (DER) over SHA-256 of the payload, and
    -- the time it states; NULL when no authority is configured.
    tsa_token    bytea,
    tsa_time     timestamptz,
    -- The database role that wrote the seal (a worker's, or an operator's).
    sealed_by    text NOT NULL DEFAULT session_user,
    CONSTRAINT head_seal_token_time CHECK ((tsa_token IS NULL) = (tsa_time IS NULL))
);

CREATE FUNCTION refuse_seal_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'a seal is never changed; a new one is written by lienthong audit --seal';
END
$$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON head_seals
    FOR EACH ROW EXECUTE FUNCTION refuse_seal_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON head_seals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_seal_change();
