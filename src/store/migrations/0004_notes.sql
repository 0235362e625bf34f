-- Agents' internal notes on a conversation: seen by agents only, never sent to the shopper.
-- Portable SQL like the other migrations (PostgreSQL accepts it as is).
CREATE TABLE notes (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    agent TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notes_by_conversation ON notes (conversation_id, created_at)
