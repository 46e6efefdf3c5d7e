-- Each tenant's trust store: PEM certificates (CMS signers' anchors) and public keys (raw RSA).
CREATE TABLE trust_entries (
    tenant      text        NOT NULL,
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('certificate', 'public_key')),
    fingerprint text        NOT NULL,
    pem         text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, fingerprint)
);

-- What checking the image found: its signature's verdict, the trust entries it relied on
-- (removing one makes the software untrusted), and the inner hashes' report. Software taken in
-- before these checks existed says 'unchecked'.
ALTER TABLE software
    ADD COLUMN trust       text   NOT NULL DEFAULT 'unchecked'
        CHECK (trust IN ('verified', 'unverified', 'unsigned', 'untrusted', 'unchecked')),
    ADD COLUMN signature   jsonb,
    ADD COLUMN trusted_by  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN image_check jsonb;

CREATE INDEX software_trusted_by ON software USING gin (trusted_by) WHERE trust = 'verified';
