"""Named, append-only schema migrations. Never edit or reorder one: add a new one at the end."""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    platform TEXT NOT NULL,
    platform_user_id TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    opted_out INTEGER NOT NULL DEFAULT 0,
    blocked_bot INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    UNIQUE (platform, platform_user_id)
);
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    platform TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX conversations_active ON conversations (platform, chat_id, user_id, ended_at);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'done' CHECK (status IN ('pending', 'done', 'failed')),
    reply_to INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    platform_message_id TEXT,
    model TEXT,
    adapter TEXT,
    latency_s REAL,
    sources TEXT NOT NULL DEFAULT '[]',
    dropped_history INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_platform_id ON messages (platform_message_id);
CREATE TABLE feedback (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    value INTEGER NOT NULL CHECK (value IN (-1, 1)),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE corrections (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE training_runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    trigger TEXT NOT NULL DEFAULT 'manual',
    status TEXT NOT NULL CHECK (status IN ('running', 'promoted', 'rejected', 'skipped', 'failed')),
    version TEXT,
    parent TEXT,
    summary TEXT NOT NULL DEFAULT '',
    report TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    platform TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '',
    allowed INTEGER NOT NULL,
    result TEXT NOT NULL DEFAULT ''
);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""),
    ("0002_kb_sources", """
CREATE TABLE kb_sources (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    ingested_at REAL NOT NULL,
    ingested_by TEXT NOT NULL DEFAULT ''
);
"""),
    ("0003_message_refs", """
CREATE TABLE message_refs (
    platform TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    platform_message_id TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    PRIMARY KEY (platform, chat_id, platform_message_id)
);
CREATE INDEX message_refs_message ON message_refs (message_id);
"""),
    ("0004_reviews", """
ALTER TABLE corrections ADD COLUMN origin TEXT NOT NULL DEFAULT 'owner'
    CHECK (origin IN ('owner', 'admin', 'suggestion'));
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    answer_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    correction_id INTEGER REFERENCES corrections(id) ON DELETE CASCADE,
    decision TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
    edited_text TEXT,
    reviewer TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE UNIQUE INDEX reviews_item ON reviews (answer_id, IFNULL(correction_id, 0));
"""),
    ("0005_run_waiting", """
CREATE TABLE training_runs_0005 (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    trigger TEXT NOT NULL DEFAULT 'manual',
    status TEXT NOT NULL CHECK (status IN ('running', 'promoted', 'rejected', 'skipped', 'failed',
                                           'waiting')),
    version TEXT,
    parent TEXT,
    summary TEXT NOT NULL DEFAULT '',
    report TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO training_runs_0005 SELECT id, started_at, finished_at, trigger, status, version, parent,
    summary, report FROM training_runs;
DROP TABLE training_runs;
ALTER TABLE training_runs_0005 RENAME TO training_runs
"""),
]
