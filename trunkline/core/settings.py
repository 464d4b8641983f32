"""Runtime settings: `TRUNKLINE_*` environment variables with embedded defaults, validated
once, read with pydantic-settings.

Every process (CLI, worker, sink, edges, media nodes) reads the same variables, so one
`export` points the whole stack somewhere else; the CLI's flags override them, and the
CLI hands its settings to the processes it starts (`Settings.to_env`). Each field `x` is
the variable `TRUNKLINE_X`. An empty variable means its default (except
`TRUNKLINE_TOPIC_PREFIX`, where empty is a valid prefix). A bad value raises
`SettingsError` naming the variable, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo
from pydantic_core import PydanticUseDefault
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from trunkline.core.logs import LOG_FORMATS, LOG_LEVELS

ENV_PREFIX = "TRUNKLINE_"
_TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]*$")
_APP_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_HOST_RE = re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])$")  # name, IPv4, [IPv6]

#: CPU priority of the ClickHouse sink process (trunkline.core.aio.set_cpu_priority)
SINK_PRIORITIES = ("idle", "normal")


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def env_var(field_name: str) -> str:
    """The environment variable of a Settings field: `kafka_port` -> TRUNKLINE_KAFKA_PORT."""
    return ENV_PREFIX + field_name.upper()


def _name(info: ValidationInfo) -> str:
    return env_var(info.field_name or "")


def _unset(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip() == "")


# -- value checks (each error names the variable) --------------------------------------
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


def check_jvm_opts(value: str, name: str = "TRUNKLINE_KAFKA_JVM_OPTS") -> list[str]:
    """Shell-quoted JVM options for the local broker; each must start with '-'."""
    try:
        opts = shlex.split(value)
    except ValueError as exc:
        raise SettingsError(f"{name}={value!r}: {exc}") from exc
    for opt in opts:
        if not opt.startswith("-"):
            raise SettingsError(f"{name}: {opt!r} is not a JVM option (options start with '-')")
    return opts


# -- field types: a before-validator per kind, so every message is ours ------------------
def _port(raw: Any, info: ValidationInfo) -> int:
    if _unset(raw):
        raise PydanticUseDefault()
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{_name(info)}={raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise SettingsError(f"{_name(info)}={value} is outside 1..65535")
    return value


def _positive_ms(raw: Any, info: ValidationInfo) -> int:
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw).strip()
    if not text.isdigit() or int(text) <= 0:
        raise SettingsError(
            f"{_name(info)}={raw!r} must be a positive whole number of milliseconds"
        )
    return int(text)


def _positive_count(raw: Any, info: ValidationInfo) -> int:
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw).strip()
    if not text.isdigit() or int(text) <= 0:
        raise SettingsError(f"{_name(info)}={raw!r} must be a positive whole number")
    return int(text)


#: the decision topics' partition count: at most one worker per partition shares them
MAX_DECISION_PARTITIONS = 64


def _decision_partitions(raw: Any, info: ValidationInfo) -> int:
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_DECISION_PARTITIONS:
        raise SettingsError(
            f"{_name(info)}={raw!r} must be a whole number of partitions, "
            f"1..{MAX_DECISION_PARTITIONS}"
        )
    return int(text)


def _host(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw)
    if not _HOST_RE.match(text):
        raise SettingsError(f"{_name(info)}={text!r} is not a host name or IP address")
    return text


def _http_url(raw: Any, info: ValidationInfo) -> str | None:
    if _unset(raw):
        return None
    text = str(raw)
    url = urlparse(text)
    if url.scheme not in ("http", "https", "mock") or not url.netloc:  # mock: in-memory
        raise SettingsError(f"{_name(info)}={text!r} is not an http(s):// (or mock://) URL")
    return text


def _public_url(raw: Any, info: ValidationInfo) -> str:
    """The base URL providers call (webhook signatures are checked against it): http(s),
    a host, no query; kept without a trailing slash."""
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw)
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.netloc or url.query:
        raise SettingsError(
            f"{_name(info)}={text!r}: expected http(s)://host[:port][/path], no query"
        )
    return text.rstrip("/")


def _path(raw: Any, info: ValidationInfo) -> Path:
    if _unset(raw):
        raise PydanticUseDefault()
    path = Path(raw).resolve()
    if path.exists() and not path.is_dir():
        raise SettingsError(f"{_name(info)}={str(raw)!r} is not a directory")
    return path


def _host_port(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"{_name(info)}={text!r} is not host:port")
    return text


def _bootstrap(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    return check_bootstrap(str(raw), _name(info))


def _dsn(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    return check_clickhouse_dsn(str(raw))


def _topic_prefix(raw: Any, info: ValidationInfo) -> str:
    if raw is None:
        raise PydanticUseDefault()
    text = str(raw)  # empty is a valid prefix
    if not _TOPIC_PREFIX_RE.match(text):
        raise SettingsError(f"{_name(info)}={text!r}: only letters, digits, '.', '_' and '-'")
    return text


def _app_id(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    text = str(raw)
    if not _APP_ID_RE.match(text):
        raise SettingsError(f"{_name(info)}={text!r}: only letters, digits, '.', '_', '-'")
    return text


def _sink_priority(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    if raw not in SINK_PRIORITIES:
        raise SettingsError(f"{_name(info)}={raw!r}: must be one of {', '.join(SINK_PRIORITIES)}")
    return str(raw)


def _choice(choices: tuple[str, ...]) -> Any:
    """A validator accepting one of `choices` (any case)."""

    def check(raw: Any, info: ValidationInfo) -> str:
        if _unset(raw):
            raise PydanticUseDefault()
        text = str(raw).strip().lower()
        if text not in choices:
            raise SettingsError(f"{_name(info)}={raw!r}: must be one of {', '.join(choices)}")
        return text

    return check


_SCHEDULE_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_SCHEDULE_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_schedule(text: str, name: str = "TRUNKLINE_WEBHOOK_RETRY_SCHEDULE") -> tuple[int, ...]:
    """``"5s,5m,30m,2h"`` -> the delays in ms before each retry (one entry per retry)."""
    delays: list[int] = []
    for part in text.split(","):
        m = _SCHEDULE_RE.match(part.strip())
        if not m or int(m.group(1)) == 0:
            raise SettingsError(
                f"{name}={text!r}: {part.strip()!r} is not a positive delay such as "
                "100ms, 5s, 5m, 2h or 1d"
            )
        delays.append(int(m.group(1)) * _SCHEDULE_UNIT_MS[m.group(2)])
    return tuple(delays)


def _schedule(raw: Any, info: ValidationInfo) -> str:
    if _unset(raw):
        raise PydanticUseDefault()
    parse_schedule(str(raw), _name(info))
    return ",".join(p.strip() for p in str(raw).split(","))


def _jvm_opts(raw: Any, info: ValidationInfo) -> str:
    if raw is None:
        raise PydanticUseDefault()
    check_jvm_opts(str(raw), _name(info))
    return str(raw)


Port = Annotated[int, BeforeValidator(_port)]
PositiveMs = Annotated[int, BeforeValidator(_positive_ms)]
PositiveCount = Annotated[int, BeforeValidator(_positive_count)]
Host = Annotated[str, BeforeValidator(_host)]
HostPort = Annotated[str, BeforeValidator(_host_port)]
AbsPath = Annotated[Path, BeforeValidator(_path)]


def _default_cache_dir() -> Path:
    return (Path.home() / ".cache" / "trunkline").resolve()


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ
    (tests and the CLI build settings from an explicit environment)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {k.lower(): v for k, v in env.items()}


#: the environment `Settings()` reads while `from_env` builds one (None: os.environ)
_ENVIRONMENT: ContextVar[Mapping[str, str] | None] = ContextVar(
    "trunkline_settings_environment", default=None
)


class Settings(BaseSettings):
    """Everything a trunkline process reads from its environment, validated and frozen."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    state_dir: AbsPath = Field(default_factory=lambda: Path(".state").resolve())
    cache_dir: AbsPath = Field(default_factory=_default_cache_dir)
    kafka_port: Port = 19092
    kafka_controller_port: Port = Field(
        default_factory=lambda data: int(data.get("kafka_port", 19092)) + 1
    )
    kafka_bootstrap: Annotated[str, BeforeValidator(_bootstrap)] = Field(
        default_factory=lambda data: f"127.0.0.1:{data.get('kafka_port', 19092)}"
    )
    kafka_jvm_opts: Annotated[str, BeforeValidator(_jvm_opts)] = ""
    topic_prefix: Annotated[str, BeforeValidator(_topic_prefix)] = "trunkline."
    app_id: Annotated[str, BeforeValidator(_app_id)] = "trunkline"
    #: partitions of admission, routing and backend-heartbeats (and the tables'
    #: changelogs): how many workers can share the decision path (trunkline.core.topics)
    decision_partitions: Annotated[int, BeforeValidator(_decision_partitions)] = 2
    clickhouse_dsn: Annotated[str, BeforeValidator(_dsn)] = Field(
        default_factory=lambda data: f"chdb://{data.get('state_dir', Path('.state'))}/clickhouse"
    )
    schema_registry_url: Annotated[str | None, BeforeValidator(_http_url)] = None
    worker_web_host: Host = "127.0.0.1"
    worker_web_port: Port = 6066
    sink_web_host: Host = "127.0.0.1"
    sink_web_port: Port = 6067
    sink_priority: Annotated[str, BeforeValidator(_sink_priority)] = "idle"
    sink_flush_ms: PositiveMs = 2_000
    #: every service's logs (trunkline.core.logs): one-line text or JSON, and the level
    #: a service's `--loglevel` defaults to
    log_format: Annotated[str, BeforeValidator(_choice(LOG_FORMATS))] = "text"
    log_level: Annotated[str, BeforeValidator(_choice(LOG_LEVELS))] = "info"
    sip_listen: HostPort = "127.0.0.1:5060"
    sip_metrics_listen: HostPort = "127.0.0.1:9060"
    #: flood control (edge/sip/flood.py): requests a second per source IP, the burst
    #: one may save (pike's default density is 30 per 2 s), and the rate for sources in
    #: any number's allowedSourceIps (bursts of twice that)
    sip_flood_rate: PositiveCount = 100
    sip_flood_burst: PositiveCount = 30
    sip_trusted_rate: PositiveCount = 5_000
    #: the webhook edge (edge/webhook): where it listens, and the URL providers call
    http_listen: HostPort = "127.0.0.1:8080"
    public_url: Annotated[str, BeforeValidator(_public_url)] = "http://127.0.0.1:8080"
    decision_timeout_ms: PositiveMs = 5_000
    redirect_timeout_ms: PositiveMs = 10_000
    heartbeat_timeout_ms: PositiveMs = 5_000
    state_retention_ms: PositiveMs = 600_000
    #: billing and lifecycle webhooks (streams/billing*.py, streams/webhooks/)
    billing_web_port: Port = 6068
    billing_retention_ms: PositiveMs = 86_400_000
    webhooks_web_port: Port = 6069
    webhook_retry_schedule: Annotated[str, BeforeValidator(_schedule)] = "5s,5m,30m,2h,5h,10h,10h"
    webhook_timeout_ms: PositiveMs = 10_000
    webhook_concurrency: PositiveCount = 64

    @property
    def decision_timeout_s(self) -> float:
        return self.decision_timeout_ms / 1000

    @property
    def is_embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    @property
    def worker_url(self) -> str:
        return f"http://{self.worker_web_host}:{self.worker_web_port}"

    @property
    def sink_url(self) -> str:
        return f"http://{self.sink_web_host}:{self.sink_web_port}"

    @property
    def billing_url(self) -> str:
        return f"http://{self.worker_web_host}:{self.billing_web_port}"

    @property
    def webhooks_url(self) -> str:
        return f"http://{self.worker_web_host}:{self.webhooks_web_port}"

    @property
    def retry_schedule_ms(self) -> tuple[int, ...]:
        return parse_schedule(self.webhook_retry_schedule)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment: os.environ, or the mapping `from_env` was
        given (no .env files, no secrets directory)."""
        env = _ENVIRONMENT.get()
        return (init_settings, env_settings if env is None else _MappingSource(settings_cls, env))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default: os.environ); SettingsError names a bad variable."""
        return cls._built({}, os.environ if env is None else env)

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with `changes` (field names; None means unchanged), validated like the
        environment. `decision_timeout_s` is accepted for `decision_timeout_ms`."""
        clean = {k: v for k, v in changes.items() if v is not None}
        if "decision_timeout_s" in clean:
            seconds = clean.pop("decision_timeout_s")
            if not isinstance(seconds, int | float):
                raise SettingsError(f"decision_timeout_s={seconds!r} is not a number")
            clean["decision_timeout_ms"] = max(1, round(seconds * 1000))
        unknown = sorted(set(clean) - set(type(self).model_fields))
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        return self._built({**self.model_dump(), **clean}, {})

    def to_env(self) -> dict[str, str]:
        """These settings as the TRUNKLINE_* variables that reproduce them in a child."""
        return {
            env_var(name): str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    @classmethod
    def _built(cls, values: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
        """`values` (field names) over `env` (variables), validated."""
        token = _ENVIRONMENT.set(env)
        try:
            return cls(**values)
        except ValidationError as exc:
            errors = [e for e in exc.errors() if e["type"] != "default_factory_not_called"]
            raise SettingsError("; ".join(_describe(e) for e in errors)) from None
        finally:
            _ENVIRONMENT.reset(token)


def _describe(error: Any) -> str:
    """One pydantic error as our message: the check's own text, or the variable's name
    with what pydantic said."""
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("error"), SettingsError):
        return str(ctx["error"])
    field = str(error["loc"][0]) if error.get("loc") else "?"
    return f"{env_var(field)}={error.get('input')!r}: {error.get('msg')}"
