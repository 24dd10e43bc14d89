-- 0010: the certificates each agency signs with, and the agencies allowed SHA-1.
--
-- A package is accepted only when signed with a certificate registered for
-- its agency, not merely one from a trusted CA naming it: a CA that issues
-- a second certificate for an agency (by mistake, or to an impostor) does
-- not make that one good. An agency holds several during a rollover (the
-- new certificate registered before the old one is retired), so they live
-- in a table of their own, named by the SHA-256 of their DER. An agency
-- without any can receive but not send.
--
-- The registry, like the rest of agencies, is mutable configuration, not
-- history: it is not part of the tamper-evident chains (0002), which cover
-- what was received and decided. What was decided names the reason, and
-- the rejection detail names the certificate's serial.
CREATE TABLE agency_certificates (
    agency          text NOT NULL REFERENCES agencies (code) ON DELETE CASCADE,
    sha256          text NOT NULL
                    CONSTRAINT agency_certificate_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    certificate_pem text NOT NULL
                    CONSTRAINT agency_certificate_is_pem
                    CHECK (certificate_pem LIKE '-----BEGIN CERTIFICATE-----%'),
    registered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency, sha256)
);

-- agencies.certificate_pem (one certificate per agency) moves here: the
-- first PEM block of the column (a file given to `agency add --cert` may
-- carry the chain after it), named by the SHA-256 of the block's DER.
INSERT INTO agency_certificates (agency, sha256, certificate_pem)
SELECT a.code,
       encode(sha256(decode(regexp_replace(block[1], '\s', '', 'g'), 'base64')), 'hex'),
       '-----BEGIN CERTIFICATE-----' || block[1] || E'-----END CERTIFICATE-----\n'
FROM agencies a,
     regexp_match(a.certificate_pem, '-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----')
         AS block
WHERE a.certificate_pem IS NOT NULL;

ALTER TABLE agencies DROP COLUMN certificate_pem;

-- SHA-1 signatures are broken for collisions; a legacy sender's software
-- may still produce them, and the operator may accept them from that one
-- agency (`agency add --allow-sha1`), never from all.
ALTER TABLE agencies ADD COLUMN allow_sha1 boolean NOT NULL DEFAULT false;
