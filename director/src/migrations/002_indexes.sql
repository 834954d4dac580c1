-- Every vehicle request looks its credential up.
CREATE UNIQUE INDEX vehicles_by_credential ON vehicles(credential_sha256);
CREATE INDEX assignment_ecus_by_ecu ON assignment_ecus(ecu_serial, status);
