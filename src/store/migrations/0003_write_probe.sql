-- One row that /readyz rewrites to check that the database accepts (and syncs) writes.
CREATE TABLE write_probe (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL
)
