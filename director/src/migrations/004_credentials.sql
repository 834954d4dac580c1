-- Credentials with a lifecycle: every secret expires and can be revoked, and a listing shows
-- which are live. Times are RFC 3339 UTC text, as everywhere in this schema.

-- Operator API tokens. Tokens made before expiry existed get 90 days from this migration,
-- not "never".
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
ALTER TABLE api_tokens ADD COLUMN revoked_at TEXT;
UPDATE api_tokens SET expires_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+90 days');
UPDATE api_tokens SET revoked_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE revoked = 1;

-- Provisioning tokens: a bounded number of uses and an expiry. A one-time token is one
-- with max_uses 1; existing fleet-wide tokens keep working for 7 days from this migration.
ALTER TABLE provisioning_tokens ADD COLUMN expires_at TEXT;
ALTER TABLE provisioning_tokens ADD COLUMN max_uses INTEGER;
ALTER TABLE provisioning_tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
UPDATE provisioning_tokens SET
    expires_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+7 days'),
    max_uses = CASE WHEN one_time = 1 THEN 1 ELSE 1000000 END,
    uses = used;

-- Vehicle credentials: an expiry, revocation, a renewed credential that takes over at its
-- first use (so a vehicle that crashes before it stored the new one keeps the old one),
-- and the fingerprint of the client certificate bound to the vehicle at registration.
ALTER TABLE vehicles ADD COLUMN credential_issued_at TEXT;
ALTER TABLE vehicles ADD COLUMN credential_expires_at TEXT;
ALTER TABLE vehicles ADD COLUMN credential_revoked_at TEXT;
ALTER TABLE vehicles ADD COLUMN next_credential_sha256 TEXT;
ALTER TABLE vehicles ADD COLUMN next_credential_expires_at TEXT;
ALTER TABLE vehicles ADD COLUMN tls_fingerprint TEXT;
UPDATE vehicles SET
    credential_issued_at = created_at,
    credential_expires_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+365 days');
CREATE UNIQUE INDEX vehicles_by_next_credential ON vehicles(next_credential_sha256)
    WHERE next_credential_sha256 IS NOT NULL;
CREATE UNIQUE INDEX vehicles_by_tls_fingerprint ON vehicles(tls_fingerprint)
    WHERE tls_fingerprint IS NOT NULL;
