-- What the parser reads from sw-description, and whether any device ever had an action for the
-- software (then deleting it keeps the row for history: a soft delete).
ALTER TABLE software
    ADD COLUMN description text,
    ADD COLUMN signed      boolean     NOT NULL DEFAULT false,
    ADD COLUMN members     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN images      jsonb       NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN used        boolean     NOT NULL DEFAULT false,
    ADD COLUMN deleted_at  timestamptz;

-- A soft-deleted software keeps its row (and its sha256) but no longer blocks a new upload.
ALTER TABLE software DROP CONSTRAINT software_check;
ALTER TABLE software ADD CONSTRAINT software_location
    CHECK (deleted OR ((object_key IS NULL) <> (external_url IS NULL)));
CREATE INDEX software_by_name ON software (tenant, name, version) WHERE NOT deleted;
