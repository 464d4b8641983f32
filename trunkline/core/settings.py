"""Runtime settings: environment variables with embedded defaults, validated once.

Every process (CLI, worker, edges, media nodes) reads the same variables, so one
`export` points the whole stack somewhere else. Command-line flags override them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

_TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]*$")
_APP_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name}={value} is outside 1..65535")
    return value


#: CPU priority of the ClickHouse sink process (trunkline.core.aio.set_cpu_priority)
SINK_PRIORITIES = ("idle", "normal")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r}: must be one of {', '.join(choices)}")
    return raw


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise SettingsError(f"{name}={raw!r} must be a positive whole number of milliseconds")
    return int(raw)


def _positive_count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise SettingsError(f"{name}={raw!r} must be a positive whole number")
    return int(raw)


def _host_port_setting(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"{name}={raw!r} is not host:port")
    return raw


def check_bootstrap(value: str, name: str = "TRUNKLINE_KAFKA_BOOTSTRAP") -> str:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise SettingsError(f"{name} is empty; expected host:port[,host:port...]")
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise SettingsError(f"{name}: {part!r} is not host:port")
    return ",".join(parts)


def check_clickhouse_dsn(value: str) -> str:
    scheme = urlparse(value).scheme
    if scheme not in ("chdb", "http", "https", "clickhouse", "clickhouses"):
        raise SettingsError(
            f"TRUNKLINE_CLICKHOUSE_DSN={value!r}: scheme must be chdb://, http:// or https://"
        )
    return value


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    cache_dir: Path
    kafka_bootstrap: str
    kafka_port: int
    kafka_controller_port: int
    topic_prefix: str
    app_id: str
    clickhouse_dsn: str
    schema_registry_url: str | None
    worker_web_host: str
    worker_web_port: int
    redirect_timeout_ms: int = 10_000
    heartbeat_timeout_ms: int = 5_000
    decision_timeout_s: float = 5.0
    state_retention_ms: int = 600_000
    sink_web_host: str = "127.0.0.1"
    sink_web_port: int = 6067
    sip_listen: str = "127.0.0.1:5060"
    sink_priority: str = "idle"
    sink_flush_ms: int = 2_000
    sip_flood_rate: int = 100
    sip_trusted_rate: int = 5_000

    @property
    def is_embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    @property
    def worker_url(self) -> str:
        return f"http://{self.worker_web_host}:{self.worker_web_port}"

    @property
    def sink_url(self) -> str:
        return f"http://{self.sink_web_host}:{self.sink_web_port}"

    def with_overrides(self, **changes: object) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **clean)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        state_dir = Path(env.get("TRUNKLINE_STATE_DIR") or ".state").resolve()
        cache_dir = Path(
            env.get("TRUNKLINE_CACHE_DIR") or Path.home() / ".cache" / "trunkline"
        ).resolve()
        kafka_port = _port(env, "TRUNKLINE_KAFKA_PORT", 19092)
        controller_port = _port(env, "TRUNKLINE_KAFKA_CONTROLLER_PORT", kafka_port + 1)
        bootstrap = check_bootstrap(
            env.get("TRUNKLINE_KAFKA_BOOTSTRAP") or f"127.0.0.1:{kafka_port}"
        )
        prefix = env.get("TRUNKLINE_TOPIC_PREFIX", "trunkline.")
        if not _TOPIC_PREFIX_RE.match(prefix):
            raise SettingsError(
                f"TRUNKLINE_TOPIC_PREFIX={prefix!r}: only letters, digits, '.', '_' and '-'"
            )
        app_id = env.get("TRUNKLINE_APP_ID") or "trunkline"
        if not _APP_ID_RE.match(app_id):
            raise SettingsError(f"TRUNKLINE_APP_ID={app_id!r}: only letters, digits, '.', '_', '-'")
        dsn = check_clickhouse_dsn(
            env.get("TRUNKLINE_CLICKHOUSE_DSN") or f"chdb://{state_dir / 'clickhouse'}"
        )
        registry = env.get("TRUNKLINE_SCHEMA_REGISTRY_URL") or None
        return cls(
            state_dir=state_dir,
            cache_dir=cache_dir,
            kafka_bootstrap=bootstrap,
            kafka_port=kafka_port,
            kafka_controller_port=controller_port,
            topic_prefix=prefix,
            app_id=app_id,
            clickhouse_dsn=dsn,
            schema_registry_url=registry,
            worker_web_host=env.get("TRUNKLINE_WORKER_WEB_HOST") or "127.0.0.1",
            worker_web_port=_port(env, "TRUNKLINE_WORKER_WEB_PORT", 6066),
            redirect_timeout_ms=_positive(env, "TRUNKLINE_REDIRECT_TIMEOUT_MS", 10_000),
            heartbeat_timeout_ms=_positive(env, "TRUNKLINE_HEARTBEAT_TIMEOUT_MS", 5_000),
            decision_timeout_s=_positive(env, "TRUNKLINE_DECISION_TIMEOUT_MS", 5_000) / 1000,
            state_retention_ms=_positive(env, "TRUNKLINE_STATE_RETENTION_MS", 600_000),
            sink_web_host=env.get("TRUNKLINE_SINK_WEB_HOST") or "127.0.0.1",
            sink_web_port=_port(env, "TRUNKLINE_SINK_WEB_PORT", 6067),
            sip_listen=_host_port_setting(env, "TRUNKLINE_SIP_LISTEN", "127.0.0.1:5060"),
            sink_priority=_choice(env, "TRUNKLINE_SINK_PRIORITY", SINK_PRIORITIES, "idle"),
            sink_flush_ms=_positive(env, "TRUNKLINE_SINK_FLUSH_MS", 2_000),
            sip_flood_rate=_positive_count(env, "TRUNKLINE_SIP_FLOOD_RATE", 100),
            sip_trusted_rate=_positive_count(env, "TRUNKLINE_SIP_TRUSTED_RATE", 5_000),
        )
