"""Configuration: environment variables (and an optional TOML file), validated at start-up.

Every setting has an environment variable ``TRIPWIRE_<NAME>`` (``DATABASE_URL`` and
``REDIS_URL`` keep their conventional names). ``TRIPWIRE_CONFIG`` may name a TOML file whose
keys are the setting names in lower case; the environment wins over the file. A value that does
not parse, or a combination that cannot work, stops the start with a message naming the
variable (a :class:`~protocol.errors.ConfigError`), never a stack trace.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from actors.gc_policy import DEFAULT_GEN0
from protocol.errors import ConfigError

__all__ = [
    "DEFAULT_DEMO_PASSWORD",
    "SETTINGS_HELP",
    "Settings",
    "env_name",
    "is_loopback",
    "load_settings",
    "parse_strategies",
]

DEFAULT_DEMO_PASSWORD = "demo-password"
"""Printed in the start banner: fine on loopback, refused on any other address."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: str = ".tripwire"
    data_dir: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    jwt_secret: str | None = None
    jwt_ttl_s: int = 3600
    log_format: str = "console"
    log_level: str = "info"
    log_frames: bool = False
    feed: str = "replay"
    replay_speed: float = 1.0
    replay_start_s: float = 44_970.0
    feed_token: str | None = None
    strategies: str | None = None
    demo_strategy: bool = True
    paper_device: bool = True
    demo_user: str = "demo"
    demo_password: str = DEFAULT_DEMO_PASSWORD
    admin_user: str = "admin"
    admin_password: str | None = None
    handshake_window_ms: int = 5000
    quote_max_ahead_ms: int = 5000
    handshake_timeout_s: float = 10.0
    device_heartbeat_s: int = 5
    device_stale_after_s: int = 30
    device_max_frame: int = 1_048_576
    client_max_frame: int = 65_536
    client_frame_rate: float = 20.0
    client_frame_burst: int = 200
    max_body_bytes: int = 262_144
    legacy_redirects: bool = True
    snapshot_interval_s: float = 60.0
    read_cache_ttl_ms: int = 500
    login_burst: int = 5
    login_refill_s: float = 12.0
    login_address_burst: int = 20
    login_address_refill_s: float = 3.0
    login_max_hashing: int = 2
    max_http_per_address: int = 64
    max_ws_per_address: int = 64
    ws_direct: bool = True
    gc_gen0: int = DEFAULT_GEN0
    chart_workers: int = 2
    chart_per_user: int = 2
    chart_queue: int = 8
    notify_queue: int = 1000
    notify_workers: int = 4
    notify_timeout_s: float = 5.0
    notify_attempts: int = 5
    notify_backoff_s: float = 0.5
    notify_backoff_cap_s: float = 30.0
    notify_telegram_api: str = "https://api.telegram.org"
    notify_private_urls: bool = False
    close_max_attempts: int = 5
    retry_backoff_ms: int = 200
    retry_backoff_max_ms: int = 5000
    csv_export_max_rows: int = 100_000
    nodes: int = 1
    expect_nodes: int = 1
    node_url: str | None = None
    node_id: str | None = None
    partitions: int = 64
    lease_s: float = 5.0
    stream_keep_s: float = 300.0
    stream_append_wait_ms: float = 1.0


SETTINGS_HELP: dict[str, str] = {
    "host": "address to listen on (loopback by default)",
    "port": "port to listen on",
    "database_url": "Postgres URL; unset: an embedded Postgres under the state dir",
    "redis_url": "Redis URL (optional: the handshake nonce cache and the REST read cache)",
    "state_dir": "where the embedded Postgres, the JWT secret and the demo set-up live",
    "data_dir": "tick data for the replay feed (default: the repository's data/)",
    "tls_cert": "PEM certificate: serve https and wss (with tls_key)",
    "tls_key": "PEM private key for tls_cert",
    "jwt_secret": "HS256 key for access tokens (32+ bytes); unset: generated once, kept in "
    "the state dir",
    "jwt_ttl_s": "access token lifetime, seconds",
    "log_format": "console or json",
    "log_level": "debug, info, warning or error",
    "log_frames": "log every device frame (redacted) at debug level",
    "feed": "replay (the bundled real data), random, none, or a ws:// URL of an upstream feed",
    "replay_speed": "replay speed, 1.0 = real time",
    "replay_start_s": "seconds into the bundled day where the replay's first pass starts "
    "(default 12:29:30 UTC, just before the US payrolls move gold, so the demo's stops fire "
    "within a minute; 0 = midnight); later passes play the whole day",
    "feed_token": "token a /ws/feed publisher must present (unset: the feed socket is closed)",
    "strategies": "strategy secrets for signed signals: 'id=secret[|secret2];id2=secret' "
    "(several secrets during a rotation)",
    "demo_strategy": "run a built-in demo strategy that posts signals to the demo user",
    "paper_device": "start the built-in paper device for the demo user",
    "demo_user": "username of the demo user created at first start",
    "demo_password": "password of the demo user (the default is refused unless the host is "
    "loopback)",
    "admin_user": "username of the admin created at first start",
    "admin_password": "password of the admin (unset: no admin account is created)",
    "handshake_window_ms": "device handshake clock window, ms (at most 60000)",
    "handshake_timeout_s": "seconds a device has to send its hello",
    "quote_max_ahead_ms": "furthest a quote's time_ms may be ahead of the node's clock, ms "
    "(further: refused as 'future'; at most 60000)",
    "device_heartbeat_s": "seconds between an EA's heartbeats (told in the welcome); a device "
    "silent this long is sent a ping",
    "device_stale_after_s": "seconds without any frame after which a device is closed with 4004 "
    "and its positions flagged stale (told in the welcome; more than device_heartbeat_s)",
    "device_max_frame": "largest device frame, bytes (larger: closed with 1009)",
    "client_max_frame": "largest client frame, bytes",
    "client_frame_rate": "frames a /ws/client connection may send per second, sustained "
    "(past it and the burst: error rate_limited, closed with 1013)",
    "client_frame_burst": "frames a /ws/client connection may send at once before "
    "client_frame_rate applies",
    "max_body_bytes": "largest REST request body, bytes (larger: 413)",
    "legacy_redirects": "old Flask routes answer 301 (true) or 410 (false)",
    "snapshot_interval_s": "seconds between state snapshots",
    "read_cache_ttl_ms": "TTL of the Redis read-through cache for heavy REST reads",
    "login_burst": "login attempts allowed at once per user and address",
    "login_refill_s": "seconds to earn one more login attempt",
    "login_address_burst": "login attempts allowed at once per client address, any usernames",
    "login_address_refill_s": "seconds for an address to earn one more login attempt",
    "login_max_hashing": "password checks (argon2, 64 MiB each) running at once; more "
    "logins meanwhile get 429 (about one per core)",
    "max_http_per_address": "HTTP requests in flight at once per client address (more: 429); "
    "0 = no limit",
    "max_ws_per_address": "open WebSockets per client address (more upgrades: HTTP 429); "
    "0 = no limit",
    "ws_direct": "serve /ws/device, /ws/feed and /ws/client straight on their sockets (wsproto), "
    "not through Quart/Hypercorn: fewer task hops and writes per frame; false falls back to the "
    "Quart routes",
    "gc_gen0": "allocations between young garbage collections (CPython's 700 promotes "
    "in-flight request state, and the older collections then pause the loop for tens of ms); "
    "0 turns automatic collection off",
    "chart_workers": "processes rendering PNG charts, at most this many renders at once",
    "chart_per_user": "charts one user may have rendering or waiting at once (more: 429)",
    "chart_queue": "renders waiting for a free chart process, everyone's together (more: 429)",
    "notify_queue": "notifications waiting for delivery, everyone's together (more: the oldest "
    "is dropped and counted)",
    "notify_workers": "notifications delivered at once (each to all of its user's channels)",
    "notify_timeout_s": "seconds one notification attempt (webhook or Telegram) may take",
    "notify_attempts": "attempts per notification and channel before it is given up",
    "notify_backoff_s": "first wait before a notification is retried, seconds (doubles each "
    "time, with jitter)",
    "notify_backoff_cap_s": "longest wait between two notification attempts, seconds",
    "notify_telegram_api": "base URL of the Telegram Bot API (a local stand-in in tests)",
    "notify_private_urls": "allow webhooks on loopback, private and link-local addresses "
    "(off: users cannot make the engine call into its own network)",
    "close_max_attempts": "attempts at a close the broker refuses as retryable (a requote) "
    "before the position is CLOSE_FAILED and an operator alerted (1..20)",
    "retry_backoff_ms": "pause before the 2nd attempt of a retryable open or close, ms; it "
    "doubles at each further attempt (the defaults: 0.2, 0.4, 0.8, 1.6 s)",
    "retry_backoff_max_ms": "longest pause between two attempts of an open or close, ms",
    "csv_export_max_rows": "rows one GET /api/v1/positions.csv may stream (the export ends with "
    "a comment line saying it was cut; narrow it by date or symbol)",
}

SETTINGS_HELP.update(
    {
        "nodes": "node processes `tripwire run` starts on this machine, sharing one Postgres and "
        "one Redis (more than 1: cluster mode, docs/operations.md); about one per core",
        "expect_nodes": "nodes started together with this one (`tripwire run --nodes N` sets "
        "it for its nodes): for one lease after joining, a node claims only its share of that "
        "many, so they settle at once instead of by one handover after another",
        "node_url": "this node's own public URL (TRIPWIRE_NODE_URL); set: run as one node of a "
        "cluster, joining the others through DATABASE_URL and REDIS_URL; devices and REST calls "
        "for users owned elsewhere are redirected to the owner's URL",
        "node_id": "this node's name in the cluster (default: host and port)",
        "partitions": "partitions users are spread over in cluster mode; every node of a "
        "cluster must use the same count (it is stored in the database)",
        "lease_s": "a partition lease, seconds: a hung node's partitions are claimed after this; "
        "a killed node's at once",
        "stream_keep_s": "seconds of quotes each symbol's Redis stream keeps (at least the lease "
        "plus recovery plus the largest reader lag; older gaps replay from 1 s bars)",
        "stream_append_wait_ms": "how long a feed's call waits, blocked, for its quotes' "
        "append to Redis before the appending task takes it over (0: always the task); the "
        "event loop stalls for each round trip up to this, so set 0 where Redis is far away",
    }
)

_CONVENTIONAL = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}


def env_name(field: str) -> str:
    return _CONVENTIONAL.get(field, "TRIPWIRE_" + field.upper())


def _coerce(field: str, raw: Any, kind: Any) -> Any:
    name = env_name(field)
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        if kind is bool or kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{name} must be true or false, not {raw!r}", variable=name)
        try:
            if kind is int or kind == "int":
                return int(raw)
            if kind is float or kind == "float":
                return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {raw!r}", variable=name) from None
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file (``TRIPWIRE_CONFIG``), the environment and ``overrides``.

    Raises:
        ConfigError: a value does not parse or a combination cannot work.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = environ.get("TRIPWIRE_CONFIG")
    if config_file:
        try:
            values.update(tomllib.loads(Path(config_file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                f"TRIPWIRE_CONFIG {config_file!r}: {exc}", variable="TRIPWIRE_CONFIG"
            ) from None
    annotations = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    for field, kind in annotations.items():
        raw = environ.get(env_name(field))
        if raw is not None:
            base = kind.split(" | ")[0] if isinstance(kind, str) else kind
            values[field] = _coerce(field, raw, base)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(annotations)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    try:
        settings = msgspec.convert(values, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    _check(settings)
    return settings


def parse_strategies(spec: str | None) -> dict[str, list[bytes]]:
    """``id=secret[|secret];id2=secret`` as {strategy id: [secrets]}.

    Raises:
        ConfigError: an entry is malformed or a secret is under 16 bytes.
    """
    strategies: dict[str, list[bytes]] = {}
    for entry in filter(None, (part.strip() for part in (spec or "").split(";"))):
        name, _, secrets = entry.partition("=")
        keys = [k.encode() for k in secrets.split("|") if k]
        if not name or not keys or any(len(k) < 16 for k in keys):
            raise ConfigError(
                "TRIPWIRE_STRATEGIES entries are id=secret with 16+ byte secrets",
                variable="TRIPWIRE_STRATEGIES",
            )
        strategies[name.strip()] = keys
    return strategies


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; a name or any other address is public."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# A flat table of independent checks, one branch per setting, each settings change adding its
# line here: split up, the table would only be harder to read and to extend.
def _check(s: Settings) -> None:  # noqa: C901
    def fail(field: str, message: str) -> None:
        raise ConfigError(f"{env_name(field)}: {message}", variable=env_name(field))

    if not 0 < s.port < 65536:
        fail("port", "must be 1..65535")
    if s.log_format not in {"console", "json"}:
        fail("log_format", "must be console or json")
    if s.log_level.lower() not in {"debug", "info", "warning", "error"}:
        fail("log_level", "must be debug, info, warning or error")
    if s.gc_gen0 < 0:
        fail("gc_gen0", "must be 0 (off) or more")
    if not 0 < s.handshake_window_ms <= 60_000:
        fail("handshake_window_ms", "must be 1..60000")
    if not 0 < s.quote_max_ahead_ms <= 60_000:
        fail("quote_max_ahead_ms", "must be 1..60000")
    if s.device_heartbeat_s < 1:
        fail("device_heartbeat_s", "must be at least 1 second")
    if s.device_stale_after_s <= s.device_heartbeat_s:
        fail("device_stale_after_s", "must be more than device_heartbeat_s (a ping comes first)")
    if (s.tls_cert is None) != (s.tls_key is None):
        fail("tls_cert", "TLS needs both TRIPWIRE_TLS_CERT and TRIPWIRE_TLS_KEY")
    for field in ("tls_cert", "tls_key"):
        path = getattr(s, field)
        if path is not None and not Path(path).is_file():
            fail(field, f"{path!r} is not a readable file")
    if s.jwt_secret is not None and len(s.jwt_secret.encode()) < 32:
        fail("jwt_secret", "must be at least 32 bytes")
    if not (s.feed in {"replay", "random", "none"} or s.feed.startswith(("ws://", "wss://"))):
        fail("feed", "must be replay, random, none or a ws:// URL")
    if s.replay_speed <= 0:
        fail("replay_speed", "must be positive")
    if not 0 <= s.replay_start_s < 86_400:
        fail("replay_start_s", "must be 0..86399 seconds into the day")
    if s.device_max_frame < 4096 or s.client_max_frame < 1024 or s.max_body_bytes < 1024:
        fail("device_max_frame", "frame and body limits are too small to be useful")
    for field in ("login_burst", "login_address_burst", "login_max_hashing"):
        if getattr(s, field) < 1:
            fail(field, "must be at least 1")
    for field in ("login_refill_s", "login_address_refill_s"):
        if getattr(s, field) <= 0:
            fail(field, "must be positive")
    for field in ("max_http_per_address", "max_ws_per_address"):
        if getattr(s, field) < 0:
            fail(field, "must be 0 (no limit) or more")
    if not 0 < s.client_frame_rate <= 10_000:
        fail("client_frame_rate", "must be more than 0 and at most 10000 frames a second")
    if not 1 <= s.client_frame_burst <= 1_000_000:
        fail("client_frame_burst", "must be 1..1000000 frames")
    if not 1 <= s.chart_workers <= 64:
        fail("chart_workers", "must be 1..64")
    if s.chart_per_user < 1:
        fail("chart_per_user", "must be at least 1")
    if s.chart_queue < 0:
        fail("chart_queue", "must be 0 or more")
    if not 1 <= s.notify_queue <= 1_000_000:
        fail("notify_queue", "must be 1..1000000")
    if not 1 <= s.notify_workers <= 64:
        fail("notify_workers", "must be 1..64")
    if not 0 < s.notify_timeout_s <= 60:
        fail("notify_timeout_s", "must be more than 0 and at most 60 seconds")
    if not 1 <= s.notify_attempts <= 20:
        fail("notify_attempts", "must be 1..20")
    if not 0 < s.notify_backoff_s <= s.notify_backoff_cap_s <= 3600:
        fail("notify_backoff_s", "needs 0 < notify_backoff_s <= notify_backoff_cap_s <= 3600")
    if not s.notify_telegram_api.startswith(("https://", "http://")):
        fail("notify_telegram_api", "must be an http(s) URL")
    if not 1 <= s.close_max_attempts <= 20:
        fail("close_max_attempts", "must be 1..20")
    if not 10 <= s.retry_backoff_ms <= 60_000:
        fail("retry_backoff_ms", "must be 10..60000 ms")
    if not s.retry_backoff_ms <= s.retry_backoff_max_ms <= 600_000:
        fail("retry_backoff_max_ms", "must be at least retry_backoff_ms and at most 600000 ms")
    if not 1 <= s.csv_export_max_rows <= 10_000_000:
        fail("csv_export_max_rows", "must be 1..10000000 rows")
    if not 1 <= s.nodes <= 64:
        fail("nodes", "must be 1..64")
    if not 1 <= s.expect_nodes <= 64:
        fail("expect_nodes", "must be 1..64")
    if s.node_url is not None and not s.node_url.startswith(("http://", "https://")):
        fail("node_url", "must be the node's http(s) URL")
    if not 1 <= s.partitions <= 4096:
        fail("partitions", "must be 1..4096")
    if not 1 <= s.lease_s <= 300:
        fail("lease_s", "must be 1..300 seconds")
    if s.stream_keep_s < 3 * s.lease_s:
        fail("stream_keep_s", "must be at least three leases (a claim replays the gap from it)")
    if not 0 <= s.stream_append_wait_ms <= 10:
        fail("stream_append_wait_ms", "must be 0..10 ms")
    if s.snapshot_interval_s < 1:
        fail("snapshot_interval_s", "must be at least 1 second")
    demo = s.paper_device or s.demo_strategy
    if demo and s.demo_password == DEFAULT_DEMO_PASSWORD and not is_loopback(s.host):
        fail(
            "demo_password",
            f"is still the default and the start banner shows it, so TRIPWIRE_HOST {s.host} "
            "must be loopback; set a password of your own (or turn the demo off with "
            "TRIPWIRE_PAPER_DEVICE=false and TRIPWIRE_DEMO_STRATEGY=false)",
        )
    parse_strategies(s.strategies)
