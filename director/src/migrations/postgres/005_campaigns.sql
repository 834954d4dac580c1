-- Groups and campaigns (docs/CAMPAIGNS.md). A campaign delivers through assignments, so every
-- Uptane check on the way to the vehicle stays where it was.
CREATE TABLE vehicle_attributes (
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (vin, name)
);
CREATE INDEX vehicle_attributes_by_value ON vehicle_attributes(name, value);
CREATE TABLE vehicle_groups (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- NULL for a static group (its members below); a dynamic group's filter as JSON.
    filter TEXT,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE group_members (
    group_id BIGINT NOT NULL REFERENCES vehicle_groups(id),
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    PRIMARY KEY (group_id, vin)
);
CREATE TABLE campaigns (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- The plan as JSON: images, group, waves, threshold, soak, windows, join_later.
    spec TEXT NOT NULL,
    -- The content (length, hashes) of each image when the campaign was made: a campaign
    -- delivers those bytes or pauses, never bytes no wave has seen.
    pinned TEXT NOT NULL,
    -- Vehicles are ranked by SHA-256(seed || VIN): a random order, the same on every replica.
    seed TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    wave BIGINT NOT NULL DEFAULT 0,
    wave_started_at TEXT,
    wave_finished_at TEXT,
    -- Failures of the current wave an operator resumed past.
    accepted_failures BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE campaign_vehicles (
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    vin TEXT NOT NULL REFERENCES vehicles(vin),
    rank TEXT NOT NULL,
    -- NULL until a wave picks it.
    wave BIGINT,
    -- pool | waiting | assigned | skipped | cancelled
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    attempts BIGINT NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (campaign_id, vin)
);
CREATE INDEX campaign_vehicles_by_wave ON campaign_vehicles(campaign_id, wave, state);
CREATE TABLE campaign_assignments (
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    vin TEXT NOT NULL,
    assignment_id BIGINT NOT NULL REFERENCES assignments(id),
    PRIMARY KEY (campaign_id, vin, assignment_id)
);
