CREATE TABLE vehicles (
    vin TEXT PRIMARY KEY,
    credential_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE ecus (
    serial TEXT PRIMARY KEY,
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    hardware_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    is_primary INTEGER NOT NULL,
    installed_filename TEXT,
    installed_length INTEGER,
    installed_hashes TEXT,
    installed_release_counter INTEGER NOT NULL DEFAULT 0,
    last_report_counter INTEGER,
    last_report_at TEXT,
    attacks_reported TEXT
);
CREATE INDEX ecus_by_vin ON ecus(vin);
CREATE INDEX ecus_by_hardware ON ecus(hardware_id);

CREATE TABLE seen_nonces (
    ecu_serial TEXT NOT NULL,
    nonce TEXT NOT NULL,
    PRIMARY KEY (ecu_serial, nonce)
);

CREATE TABLE manifests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vin TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX manifests_by_vin ON manifests(vin);

CREATE TABLE assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    correlation_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE assignment_ecus (
    assignment_id INTEGER NOT NULL REFERENCES assignments(id),
    vin TEXT NOT NULL,
    ecu_serial TEXT NOT NULL,
    filename TEXT NOT NULL,
    length INTEGER NOT NULL,
    hashes TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    release_counter INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'installed', 'failed', 'cancelled')),
    detail TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (assignment_id, ecu_serial)
);
CREATE INDEX assignment_ecus_by_vin ON assignment_ecus(vin, status);

CREATE TABLE vehicle_metadata (
    vin TEXT PRIMARY KEY,
    content_sha256 TEXT NOT NULL,
    targets_version INTEGER NOT NULL,
    snapshot_version INTEGER NOT NULL,
    timestamp_version INTEGER NOT NULL,
    targets BLOB NOT NULL,
    snapshot BLOB NOT NULL,
    timestamp BLOB NOT NULL,
    expires TEXT NOT NULL
);

CREATE TABLE roots (
    version INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);

CREATE TABLE api_tokens (
    sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE provisioning_tokens (
    sha256 TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    one_time INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

-- Append-only: nothing updates or deletes rows (enforced by triggers).
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL CHECK (severity IN ('info', 'security')),
    vin TEXT,
    ecu_serial TEXT,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
