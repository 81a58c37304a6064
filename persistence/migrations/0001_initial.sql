-- Tripwire's first schema.
--
-- The journal and the snapshots are the durable record of the engine's state; every other
-- table is a projection written in the journal's own transactions (or by the gateway for
-- accounts and devices), so REST reads are plain indexed queries. Times are timestamptz (UTC);
-- prices and volumes are the wire's decimal numbers; ids are the engine's text ids.
--
-- Every index below names the query it serves. Users and devices are never deleted (they are
-- disabled or revoked), so foreign keys do not cascade, except device_secrets which belong to
-- their device.

CREATE TABLE users (
    id            text PRIMARY KEY,
    username      text NOT NULL UNIQUE,               -- login by name
    password_hash text NOT NULL,                      -- argon2id, never the password
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    settings      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE devices (
    id            text PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id),
    name          text NOT NULL,
    account_login text NOT NULL,                      -- the MetaTrader account number
    broker        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX devices_user_idx ON devices (user_id);  -- a user's devices

-- HMAC keys must be usable, so the secret itself is stored; it is never returned after
-- creation and never logged. Several rows per device may be valid at once (rotation): the
-- handshake tries each unexpired one. The primary key serves "valid secrets of device X".
CREATE TABLE device_secrets (
    device_id  text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    secret     bytea NOT NULL CHECK (length(secret) >= 16),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (device_id, created_at)
);

-- A signal is identified by (strategy_id, signal_id, version): posting the same triple twice
-- finds this row (the primary key) instead of making a second one.
CREATE TABLE signals (
    strategy_id text NOT NULL,
    signal_id   text NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    symbol      text NOT NULL,
    side        text NOT NULL CHECK (side IN ('buy', 'sell')),
    payload     jsonb NOT NULL,                       -- the signal as received
    received_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (strategy_id, signal_id, version)
);
CREATE INDEX signals_received_idx ON signals (received_at);  -- recent signals, newest first

-- One decision per user per signal, whatever its version (a new version supersedes the old
-- one only for users who have not decided yet); the reference names the exact version decided.
CREATE TABLE approvals (
    id             text PRIMARY KEY,
    user_id        text NOT NULL REFERENCES users (id),
    strategy_id    text NOT NULL,
    signal_id      text NOT NULL,
    signal_version integer NOT NULL,
    decision       text NOT NULL CHECK (decision IN ('approve', 'reject')),
    decided_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz,
    ip             inet,
    user_agent     text,
    FOREIGN KEY (strategy_id, signal_id, signal_version)
        REFERENCES signals (strategy_id, signal_id, version),
    UNIQUE (user_id, strategy_id, signal_id)           -- 409 on a second decision
);
CREATE INDEX approvals_user_decided_idx ON approvals (user_id, decided_at);  -- a user's history
CREATE INDEX approvals_signal_idx ON approvals (strategy_id, signal_id, signal_version);

CREATE TABLE positions (
    id             text PRIMARY KEY,
    user_id        text NOT NULL REFERENCES users (id),
    device_id      text NOT NULL REFERENCES devices (id),
    symbol         text NOT NULL,
    side           text NOT NULL CHECK (side IN ('buy', 'sell')),
    state          text NOT NULL CHECK (state IN ('pending_open', 'open', 'closing', 'closed',
                                                  'rejected', 'close_failed', 'unknown')),
    origin         text NOT NULL CHECK (origin IN ('signal', 'manual', 'external')),
    volume         double precision NOT NULL CHECK (volume > 0),
    open_price     double precision,
    sl             double precision,
    tp             double precision,
    ticket         bigint,
    opened_at      timestamptz,
    closed_at      timestamptz,
    close_price    double precision,
    close_reason   text,
    pl             double precision,
    strategy_id    text,                               -- the signal it came from, if any
    signal_id      text,
    signal_version integer,
    approval_id    text REFERENCES approvals (id),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    doc            jsonb NOT NULL DEFAULT '{}'::jsonb, -- the engine's full position document
    FOREIGN KEY (strategy_id, signal_id, signal_version)
        REFERENCES signals (strategy_id, signal_id, version)
);
CREATE INDEX positions_user_state_idx ON positions (user_id, state);           -- open positions
CREATE INDEX positions_user_closed_idx ON positions (user_id, closed_at DESC); -- history
CREATE INDEX positions_device_state_idx ON positions (device_id, state);       -- reconciliation
CREATE INDEX positions_device_ticket_idx ON positions (device_id, ticket)      -- ticket lookup
    WHERE ticket IS NOT NULL;

CREATE TABLE commands (
    id          text PRIMARY KEY,                      -- <position_id>.<action>.<attempt>
    position_id text NOT NULL REFERENCES positions (id),
    device_id   text NOT NULL REFERENCES devices (id),
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    issued_at   timestamptz NOT NULL,
    deadline_at timestamptz NOT NULL,
    acked_at    timestamptz,
    retcode     integer,
    category    text,
    outcome     text
);
CREATE INDEX commands_position_idx ON commands (position_id);  -- a position's commands
CREATE INDEX commands_unacked_idx ON commands (device_id, deadline_at)  -- deadlines to resume
    WHERE acked_at IS NULL;

CREATE TABLE reconciliation (
    id          bigserial PRIMARY KEY,
    device_id   text NOT NULL REFERENCES devices (id),
    position_id text REFERENCES positions (id),
    kind        text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconciliation_device_idx ON reconciliation (device_id, created_at DESC);

-- actor_id and target_id name users, devices, strategies or "system": no foreign keys, and an
-- audit row must be writable even about something that does not exist (a failed login).
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    text,
    action      text NOT NULL,
    target_type text,
    target_id   text,
    ip          inet,
    user_agent  text,
    outcome     text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_actor_idx ON audit_log (actor_id, at DESC);        -- what did X do
CREATE INDEX audit_target_idx ON audit_log (target_type, target_id);  -- who touched Y

-- The user is a foreign key (alerts are listed per user); device, symbol and position are
-- plain references: an alert may concern a ticket or a device the engine does not know.
CREATE TABLE alerts (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL,
    level       text NOT NULL CHECK (level IN ('info', 'warning', 'critical')),
    user_id     text REFERENCES users (id),
    device_id   text,
    symbol      text,
    position_id text,
    message     text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX alerts_user_idx ON alerts (user_id, at DESC);  -- a user's alerts, newest first

-- The write-behind journal: one row per group-commit batch. ``records`` is one msgpack list
-- of records with sequence numbers first_seq..last_seq (contiguous across rows). first_seq is
-- unique so a batch retried after an ambiguous failure is recognised instead of written twice;
-- last_seq is unique and indexed for "batches after seq N, in order" (recovery).
CREATE TABLE journal (
    batch_seq    bigserial PRIMARY KEY,
    first_seq    bigint NOT NULL UNIQUE CHECK (first_seq >= 1),
    last_seq     bigint NOT NULL UNIQUE,
    record_count integer NOT NULL,
    written_at   timestamptz NOT NULL DEFAULT now(),
    records      bytea NOT NULL,
    CHECK (last_seq >= first_seq AND record_count = last_seq - first_seq + 1)
);

-- Snapshots of the engine's state; ``seq`` is the last journal seq folded into it.
CREATE TABLE snapshots (
    seq        bigint PRIMARY KEY CHECK (seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    payload    bytea NOT NULL,
    size       integer NOT NULL
);
