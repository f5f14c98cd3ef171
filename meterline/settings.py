"""Every METERLINE_ environment variable, in two typed, frozen objects.

`SdkSettings` is what a service that emits usage reads (the broker, the topic, the outage
spool); `Settings` adds everything the server side reads (broker process, worker, sink,
warehouse, API secret). Each field `name` is read from ``METERLINE_<NAME>`` (any case), keyword
arguments win, and pydantic validates the text as it validates any input. A name that is
neither - a typo - is an error naming the nearest real one, for an environment variable as for
a keyword override. Secrets are `SecretStr`, so printing the settings never shows them.

Plain pydantic models rather than pydantic-settings: every field is a scalar read from one
variable, and importing pydantic-settings cost ~80 ms of every command's start (measured here;
`meterline pricing quote` has 300 ms in all).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from meterline.exceptions import ConfigurationError

ENV_PREFIX = "METERLINE_"
S = TypeVar("S", bound="SdkSettings")
# No "crit": Faust accepts it, but mode then fails to set up its logging (ValueError), and so the worker.
WorkerLogLevel = Literal["error", "warn", "info", "debug"]


def _default_home() -> Path:
    return Path.home() / ".meterline"


def _default_cache() -> Path:
    return Path.home() / ".cache" / "meterline"


def _from_environment(fields: Mapping[str, object]) -> dict[str, str]:
    """The METERLINE_ variables that name one of `fields`, by field name."""
    wanted = {ENV_PREFIX + name.upper(): name for name in fields}
    return {wanted[variable.upper()]: value for variable, value in os.environ.items() if variable.upper() in wanted}


class SdkSettings(BaseModel):
    """What the SDK (`Meter`, `AsyncMeter`) and `meterline emit` read.

    Each field is read from ``METERLINE_<FIELD>`` (e.g. ``METERLINE_BOOTSTRAP``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(type(self).model_fields), **values})

    home: Path = Field(default_factory=_default_home, description="Data directory: broker data, chDB, logs, spool.")
    cache_dir: Path = Field(default_factory=_default_cache, description="Kafka jars, parsed price books.")

    # Kafka. With `bootstrap` unset we talk to the local broker that `meterline stack` runs.
    bootstrap: str | None = None
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    usage_topic: str = "meterline.usage.v1"

    # The outage spool (producers/README.md). With `spool_dir` unset it is `home`/spool.
    spool_dir: Path | None = None
    spool_max_bytes: int = Field(default=1 << 30, gt=0, description="Bound on the outage spool; past it emit raises.")
    spool_fsync: Literal["always", "interval", "never"] = "interval"
    spool_fsync_interval: float = Field(default=1.0, gt=0)
    delivery_timeout_ms: int = Field(default=30_000, gt=0, description="Unacknowledged this long: to the spool.")
    record_failures: bool = False  # measure(): a failed call records a zero-usage event

    # reserve(): the worker API that decides (any worker; it forwards to the user's owner), the
    # org's API key (`meterline keys ORG`), and what to do when no worker answers within the deadline:
    # "plan" refuses on hard-cap plans and allows on the others (producers/README.md).
    enforcement_url: str | None = None  # unset: the local worker, http://127.0.0.1:6066
    api_key: SecretStr | None = None
    reserve_deadline_seconds: float = Field(default=2.0, gt=0)
    reserve_when_unreachable: Literal["plan", "closed", "open"] = "plan"

    # Pricing: price book and plan catalogue files. Unset: the defaults shipped in meterline.pricing.
    # `emit` warns about a model the price book cannot price.
    prices: Path | None = None
    plans: Path | None = None

    @property
    def kafka_bootstrap(self) -> str:
        return self.bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.home / "spool"


class Settings(SdkSettings):
    """Configuration for the CLI, the broker, the worker and the sink (and the SDK's part).

    Its validator is built on first use (`defer_build`): the SDK's commands never need it, and
    building it is a tenth of `meterline pricing quote`'s start.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    kafka_controller_port: int = 9093
    kafka_version: str = "4.4.0"
    kafka_heap: str = "512m"
    # Kafka's default (3 s): workers started together join a new group in one assignment. With 0,
    # the first takes every partition and each later one forces a rebalance; measured here, two
    # workers on a pre-filled topic then did ~7,700 events/s instead of ~11,300.
    kafka_initial_rebalance_delay_ms: int = Field(default=3000, ge=0)
    dead_letter_topic: str = "meterline.usage.dlq.v1"
    rated_topic: str = "meterline.rated.v1"
    subscriptions_topic: str = "meterline.subscriptions.v1"  # compacted, keyed by org or org/user
    key_revocations_topic: str = "meterline.key_revocations.v1"  # compacted, keyed by org (meterline/revocations.py)
    price_books_topic: str = "meterline.price_books.v1"  # compacted, keyed by version (meterline/price_books.py)
    pool_usage_topic: str = "meterline.pool_usage.v1"  # what each batch counted in an org's pool (processors/pools.py)
    alerts_topic: str = "meterline.alerts.v1"  # a user's allowance crossing 50 / 80 / 100 %, and clearing
    decisions_topic: str = "meterline.decisions.v1"  # refused and degraded reservations, for the warehouse
    alert_webhook_url: str | None = None  # `meterline alerts deliver` POSTs each alert here (meterline/webhooks.py)
    alert_webhook_group: str = "meterline-alert-webhooks"
    default_plan: str = "free"  # the plan of a user with no subscription of its own or its org's
    partitions: int = 8

    # Processor (Faust worker).
    app_id: str = "meterline-processor"
    worker_host: str = "127.0.0.1"
    worker_port: int = 6066
    # 35 days: what Stripe and Metronome accept for backdated usage (processors/README.md).
    dedupe_window_seconds: int = Field(default=35 * 24 * 3600, gt=0)
    # ~200 bytes an id in memory (measured by the benchmark); past the bound the oldest are forgotten early.
    dedupe_max_ids_per_partition: int = Field(default=2_000_000, gt=0)
    worker_batch_size: int = Field(default=2000, gt=0)
    worker_batch_seconds: float = Field(default=0.05, gt=0)
    # A reservation not committed or released within this is released (processors/holds.py).
    reservation_ttl_seconds: float = Field(default=600.0, gt=0, le=86_400)
    # How long a killed worker's partitions (and its users' balances) wait for a new owner.
    worker_session_timeout_seconds: float = Field(default=15.0, ge=6.0, description="The broker's minimum is 6 s.")
    # A worker not serving for this long, with its recovery not moving, exits (code 75) to be restarted.
    worker_stuck_seconds: float = Field(default=120.0, gt=0)
    # Faust's and the worker's logging; `meterline worker --loglevel` sets it for the workers it starts.
    worker_log_level: WorkerLogLevel = "warn"
    # Set by `spawn_worker`: the worker stops once the process that started it is gone (lifetime.py).
    worker_parent_pid: int | None = Field(default=None, gt=0)

    # Sink and warehouse. With `clickhouse_url` unset, clickhouse-connect runs chDB on `chdb_path`.
    sink_group: str = "meterline-sink"
    # Rows per insert (or fewer, after sink_batch_seconds). Measured into chDB (`python -m
    # meterline.benchmarks sink`, medians of 3): 5,000 -> ~83,000 rows/s, 20,000 -> ~102,000,
    # 50,000 -> ~105,000. The sink holds at most two batches (one written, one read).
    sink_batch_size: int = Field(default=20_000, gt=0)
    sink_batch_seconds: float = 0.5
    sink_report_seconds: float = Field(default=30.0, gt=0, description="How often the sink logs rows stored and lag.")
    # A sink whose consumer has not been a steady member of its group for this long replaces it
    # (a consumer can stay without a coordinator after a broker restart: sinks/group_watch.py).
    sink_stuck_seconds: float = Field(default=60.0, ge=10.0)
    clickhouse_url: SecretStr | None = None
    clickhouse_database: str = "meterline"
    chdb_path: Path | None = None

    # Signs org API keys and end-user tokens. Unset: a random secret kept in `home` (mode 0600).
    api_secret: SecretStr | None = None
    # Or read from this file (mode 0600): how a parent hands the secret to a child without its environment.
    api_secret_file: Path | None = None

    @property
    def chdb_dir(self) -> Path:
        return self.chdb_path or self.home / "chdb"

    @property
    def kafka_data_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def worker_url(self) -> str:
        return f"http://{self.worker_host}:{self.worker_port}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment, with explicit keyword overrides winning; unknown names are errors."""
    check_environment()
    check_names(overrides, Settings, "option")
    return _validated(Settings, overrides)


def load_sdk_settings(base: SdkSettings | None = None, **overrides: object) -> SdkSettings:
    """The SDK's settings: `base` (default: the environment) with keyword overrides applied.

    An override must be an SDK setting: a server one (``worker_port``) or a typo (``bootstrp``)
    is an error naming the nearest SDK setting.
    """
    check_names(overrides, SdkSettings, "SDK option")
    if base is None:
        check_environment()
        return _validated(SdkSettings, overrides)
    if not overrides:
        return base
    return _validated(type(base), {**base.model_dump(), **overrides}, given=overrides)


def _validated(settings: type[S], values: Mapping[str, object], given: Mapping[str, object] | None = None) -> S:
    """`settings(**values)`, with a bad value a ConfigurationError naming its variable or option and the rule."""
    try:
        return settings(**values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = str(item["loc"][0]) if item["loc"] else "?"
            where = f"option {name!r}" if name in (values if given is None else given) else f"{ENV_PREFIX}{name.upper()}"
            field = settings.model_fields.get(name)
            secret = field is None or "SecretStr" in str(field.annotation)  # never echo a secret's value
            shown = "" if secret else f" (got {item.get('input')!r})"
            problems.append(f"{where}: {item['msg']}{shown}")
        raise ConfigurationError("; ".join(problems)) from None


def check_names(names: Mapping[str, object], settings: type[SdkSettings], what: str) -> None:
    """Raise ConfigurationError for the first name that is not a field of `settings`."""
    known = list(settings.model_fields)
    for name in names:
        if name not in settings.model_fields:
            raise ConfigurationError(_unknown(name, known, what, server_only=name in Settings.model_fields))


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigurationError for a METERLINE_ variable that no setting reads (a typo, or a stale name).

    Checked against every setting, the server's included: one environment often serves both.
    """
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    for variable in os.environ if environ is None else environ:
        if variable.upper().startswith(ENV_PREFIX) and variable.upper() not in known:
            raise ConfigurationError(_unknown(variable, known, "environment variable"))


def _unknown(name: str, known: list[str], what: str, server_only: bool = False) -> str:
    import difflib  # only on a mistake: a tenth of a millisecond less for every start

    if server_only:
        return f"{name!r} is a server setting; the SDK does not read it"
    nearest = difflib.get_close_matches(name.upper() if what == "environment variable" else name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else "; see meterline/settings.py for the list"
    return f"unknown {what} {name!r}{hint}"


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) readable by this user only; an existing one is left as it is."""
    missing = [parent for parent in (path, *path.parents) if not parent.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)  # mkdir's mode is reduced by the umask
    return path
