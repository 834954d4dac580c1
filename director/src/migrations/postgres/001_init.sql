-- The Director's schema on PostgreSQL: what SQLite's migrations 001-008 reach, in
-- PostgreSQL's terms. Integers and flags are BIGINT and bytes BYTEA, as SQLite stores them,
-- so one statement means the same on both engines (`src/sql.rs`). Times are RFC 3339 UTC
-- text, as everywhere in this schema. Tables whose listings page by SQLite's implicit
-- `rowid` have a `rowid` column of their own here.

CREATE TABLE vehicles (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    vin TEXT PRIMARY KEY,
    credential_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    credential_issued_at TEXT,
    credential_expires_at TEXT,
    credential_revoked_at TEXT,
    next_credential_sha256 TEXT,
    next_credential_expires_at TEXT,
    tls_fingerprint TEXT,
    time_reset BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX vehicles_by_credential ON vehicles(credential_sha256);
CREATE UNIQUE INDEX vehicles_by_next_credential ON vehicles(next_credential_sha256)
    WHERE next_credential_sha256 IS NOT NULL;
CREATE UNIQUE INDEX vehicles_by_tls_fingerprint ON vehicles(tls_fingerprint)
    WHERE tls_fingerprint IS NOT NULL;

CREATE TABLE ecus (
    serial TEXT PRIMARY KEY,
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    hardware_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    is_primary BIGINT NOT NULL,
    installed_filename TEXT,
    installed_length BIGINT,
    installed_hashes TEXT,
    installed_release_counter BIGINT NOT NULL DEFAULT 0,
    last_report_counter BIGINT,
    last_report_at TEXT,
    attacks_reported TEXT,
    last_report_time TEXT
);
CREATE INDEX ecus_by_vin ON ecus(vin);
CREATE INDEX ecus_by_hardware ON ecus(hardware_id);

CREATE TABLE seen_nonces (
    ecu_serial TEXT NOT NULL,
    nonce TEXT NOT NULL,
    PRIMARY KEY (ecu_serial, nonce)
);

CREATE TABLE manifests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vin TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX manifests_by_vin ON manifests(vin);
CREATE INDEX manifests_by_time ON manifests(received_at);

CREATE TABLE assignments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correlation_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE assignment_ecus (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    assignment_id BIGINT NOT NULL REFERENCES assignments(id),
    vin TEXT NOT NULL,
    ecu_serial TEXT NOT NULL,
    filename TEXT NOT NULL,
    length BIGINT NOT NULL,
    hashes TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    release_counter BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'installed', 'failed', 'cancelled')),
    detail TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (assignment_id, ecu_serial)
);
CREATE INDEX assignment_ecus_by_vin ON assignment_ecus(vin, status);
CREATE INDEX assignment_ecus_by_ecu ON assignment_ecus(ecu_serial, status);

CREATE TABLE vehicle_metadata (
    vin TEXT PRIMARY KEY,
    content_sha256 TEXT NOT NULL,
    targets_version BIGINT NOT NULL,
    snapshot_version BIGINT NOT NULL,
    timestamp_version BIGINT NOT NULL,
    targets BYTEA NOT NULL,
    snapshot BYTEA NOT NULL,
    timestamp BYTEA NOT NULL,
    expires TEXT NOT NULL,
    targets_entries TEXT NOT NULL DEFAULT '[]',
    root_version BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE roots (
    version BIGINT PRIMARY KEY,
    body BYTEA NOT NULL
);

CREATE TABLE api_tokens (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    expires_at TEXT,
    revoked_at TEXT
);

CREATE TABLE provisioning_tokens (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    one_time BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    revoked BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    max_uses BIGINT,
    uses BIGINT NOT NULL DEFAULT 0
);

-- Append-only: nothing updates rows, and only rows older than the retention cutoff may be
-- deleted (enforced by triggers, as on SQLite).
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL CHECK (severity IN ('info', 'security')),
    vin TEXT,
    ecu_serial TEXT,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    attack TEXT
);
CREATE INDEX events_by_time ON events(at);
CREATE INDEX events_by_vin ON events(vin, id);
CREATE INDEX events_by_severity ON events(severity, id);

CREATE TABLE retention (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    events_before TEXT NOT NULL
);
INSERT INTO retention (id, events_before) VALUES (1, '0000-01-01T00:00:00Z');

CREATE FUNCTION events_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_no_update();

CREATE FUNCTION events_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.at >= (SELECT events_before FROM retention WHERE id = 1) THEN
        RAISE EXCEPTION 'events are append-only until their retention ends';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_no_delete();

CREATE FUNCTION retention_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.events_before < OLD.events_before THEN
        RAISE EXCEPTION 'the retention cutoff only moves forward';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER retention_forward BEFORE UPDATE ON retention
    FOR EACH ROW EXECUTE FUNCTION retention_forward();

CREATE FUNCTION retention_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the retention cutoff is kept';
END $$;
CREATE TRIGGER retention_no_delete BEFORE DELETE ON retention
    FOR EACH ROW EXECUTE FUNCTION retention_no_delete();
