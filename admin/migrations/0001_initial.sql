-- One portable schema for SQLite and PostgreSQL (driven through sqlx's Any
-- driver): TEXT ids, BIGINT epoch-millisecond timestamps, BIGINT 0/1 flags,
-- lower-case hex TEXT hashes. Uniqueness rules live here so that concurrent
-- writers (several processes on PostgreSQL) cannot break them.

-- The permission feed's version: bumped in the same transaction as every
-- change, so versions keep increasing across restarts and processes.
CREATE TABLE feed_state (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO feed_state (id, version) VALUES (1, 0);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE admin_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    key_sha256 TEXT NOT NULL UNIQUE,
    -- The first characters of the key, so an operator can tell keys apart.
    hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE devices (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    metadata TEXT NOT NULL,
    key_sha256 TEXT NOT NULL UNIQUE,
    enabled BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX devices_tenant_created ON devices (tenant_id, created_at);

CREATE TABLE device_groups (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name_key)
);

CREATE TABLE group_members (
    tenant_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, group_id, device_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE applications (
    -- Globally unique: the broker indexes applications by id alone.
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    client_id TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    secret_generation BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    include_anomalies BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name_key),
    UNIQUE (tenant_id, id)
);
CREATE INDEX applications_tenant_created ON applications (tenant_id, created_at);

CREATE TABLE application_devices (
    tenant_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (app_id, device_id),
    FOREIGN KEY (tenant_id, app_id) REFERENCES applications (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE application_groups (
    tenant_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    PRIMARY KEY (app_id, group_id),
    FOREIGN KEY (tenant_id, app_id) REFERENCES applications (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, group_id) REFERENCES device_groups (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    -- base64 PKCS#8 DER of the Ed25519 private key.
    private_pkcs8 TEXT NOT NULL,
    -- base64url (no padding) raw public key: the JWK "x".
    public_x TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Set when a newer key replaced it; it keeps verifying for one token
    -- lifetime after that.
    retired_at BIGINT
);

CREATE TABLE audit_log (
    -- UUIDv7: ordering by id is ordering by time of insertion.
    id TEXT PRIMARY KEY,
    -- NULL for events no tenant owns (e.g. a token request for an unknown client).
    tenant_id TEXT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT,
    target_id TEXT,
    detail TEXT
);
CREATE INDEX audit_log_tenant_id ON audit_log (tenant_id, id);
