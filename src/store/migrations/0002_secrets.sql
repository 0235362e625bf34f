-- Server secrets (the key that signs shopper session tokens), so tokens survive restarts and
-- servers sharing one database accept each other's tokens.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
