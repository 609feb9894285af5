-- auth-service schema, version 1: the first step of MIGRATIONS in src/db/sqlite.rs (its
-- twin for PostgreSQL, schema.postgres.sql, is the first step in src/db/postgres.rs).
--
-- Db::open applies the steps a database has not seen in one transaction and records their
-- number in PRAGMA user_version. A later change to the schema is a new step appended to both
-- lists; this file is never edited in place.

-- One row a user. The reference's columns, plus the times that expiry needs.
-- session_id and reset_token hold SHA-256 digests (hex) of the tokens the client holds,
-- never the tokens: a copy of this file does not let anyone log in.
CREATE TABLE users (
    id                 INTEGER PRIMARY KEY,
    -- NOCASE: unique regardless of ASCII case, enforced here so racing sign-ups cannot both win.
    email              TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    hashed_password    TEXT    NOT NULL,
    session_id         TEXT,
    session_created_at INTEGER,
    session_seen_at    INTEGER,
    reset_token        TEXT,
    reset_expires_at   INTEGER
);

-- Every authenticated request looks a user up by session digest; resets by token digest.
CREATE UNIQUE INDEX users_session_id ON users (session_id);
CREATE UNIQUE INDEX users_reset_token ON users (reset_token);

-- The login throttle's counters, one row per scope ("pair ADDR EMAIL" or "addr ADDR"), kept
-- in the database so that they survive a restart and are shared by every worker.
CREATE TABLE login_failures (
    scope       TEXT    PRIMARY KEY,
    failures    INTEGER NOT NULL,
    window_ends INTEGER NOT NULL
) WITHOUT ROWID;
