-- Conversations, their messages, escalations and feedback. Portable SQL: TEXT ids made by the
-- application, INTEGER unix milliseconds, no engine-specific types (PostgreSQL comes next).
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    customer_id TEXT,
    locale TEXT NOT NULL,
    status TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX conversations_by_customer ON conversations (customer_id);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq BIGINT NOT NULL,
    role TEXT NOT NULL,
    author TEXT,
    client_id TEXT,
    text TEXT NOT NULL,
    intent TEXT,
    intent_confidence REAL,
    sentiment TEXT,
    sentiment_score REAL,
    reply_to TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (conversation_id, seq)
);

CREATE TABLE escalations (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    agent TEXT,
    sentiment_score REAL,
    created_at BIGINT NOT NULL,
    claimed_at BIGINT,
    resolved_at BIGINT
);
CREATE INDEX escalations_by_status ON escalations (status, created_at);

CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id),
    kind TEXT NOT NULL,
    helpful INTEGER,
    intent TEXT,
    sentiment TEXT,
    agent TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX feedback_by_message ON feedback (message_id);
