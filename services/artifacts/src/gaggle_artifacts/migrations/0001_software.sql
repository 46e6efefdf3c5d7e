CREATE TABLE software (
    tenant        text        NOT NULL,
    id            bigserial   NOT NULL,
    name          text        NOT NULL,
    version       text        NOT NULL,
    filename      text        NOT NULL,
    size          bigint      NOT NULL CHECK (size >= 0),
    md5           text        NOT NULL,
    sha1          text        NOT NULL,
    sha256        text        NOT NULL,
    object_key    text,
    external_url  text,
    compatibility jsonb       NOT NULL DEFAULT '[]'::jsonb,
    deleted       boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id),
    CHECK ((object_key IS NULL) <> (external_url IS NULL))
);

CREATE UNIQUE INDEX software_sha256 ON software (tenant, sha256) WHERE NOT deleted;
CREATE INDEX software_by_tenant ON software (tenant, id);
