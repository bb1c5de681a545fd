"""Typed, frozen settings. Every value can be set from the environment with the `LEDGERGATE_` prefix.

One settings object per concern; each service composes the ones it needs, so a process reads its
configuration once at start and nothing changes underneath it while it runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, InstanceOf, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledgergate.connection import KafkaConnection
from ledgergate.settings import DEFAULT_BOOTSTRAP, TOPIC_PREFIX_MAX_CHARS, TOPIC_PREFIX_PATTERN
from ledgergate.shared.kafka.provision import PROMPT_RETENTION_MS_MAX, PROMPT_RETENTION_MS_MIN

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _config(prefix: str = "LEDGERGATE_") -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore")


def _connection_from_env(data: dict[str, Any]) -> KafkaConnection:
    """TLS and SASL from the LEDGERGATE_KAFKA_* variables, read by the public package's one parser so the
    services, the SDK and the tools agree on them; the address is this object's kafka_bootstrap."""
    return KafkaConnection.from_env(bootstrap=data["kafka_bootstrap"])


class KafkaSettings(BaseSettings):
    model_config = _config()

    kafka_bootstrap: str = DEFAULT_BOOTSTRAP
    # Where the cluster is and how to authenticate (ledgergate.connection): every Kafka client a process
    # builds takes this, never kafka_bootstrap alone. Given explicitly, its bootstrap is kafka_bootstrap's.
    kafka_connection: InstanceOf[KafkaConnection] = Field(default_factory=_connection_from_env, exclude=True)
    # Prepended to every topic name, so tests and demos can run side by side on one broker
    # without reading each other's ledgers. The public package's ClientSettings applies the same rule.
    topic_prefix: str = Field(default="", max_length=TOPIC_PREFIX_MAX_CHARS, pattern=TOPIC_PREFIX_PATTERN)

    def topic(self, logical_name: str) -> str:
        return self.topic_prefix + logical_name
    # Every topic has the same count (co-partitioned by tenant); schemas/topics.yaml holds the default.
    kafka_partitions: int | None = Field(default=None, ge=1, le=256)
    # How long the prompt-bearing topics keep records (`topics apply`); None: schemas/topics.yaml's (6 h).
    prompt_retention_ms: int | None = Field(default=None, ge=PROMPT_RETENTION_MS_MIN, le=PROMPT_RETENTION_MS_MAX)

    @model_validator(mode="before")
    @classmethod
    def _one_bootstrap(cls, data: Any) -> Any:
        """A kafka_connection given explicitly brings its bootstrap: one address, never two that disagree."""
        if isinstance(data, dict) and isinstance(data.get("kafka_connection"), KafkaConnection):
            data = {**data, "kafka_bootstrap": data["kafka_connection"].bootstrap}
        return data


def _stack_dsn() -> str:
    """The local stack's database, from the same LEDGERGATE_PG_PORT/_USER/_PASSWORD/_DATABASE that
    `ledgergate stack up` starts it with."""
    return StackSettings().dsn()


class PostgresSettings(BaseSettings):
    model_config = _config()

    # LEDGERGATE_PG_DSN when set; else the local stack's database.
    pg_dsn: str = Field(default_factory=_stack_dsn)


class StackSettings(BaseSettings):
    """Where and how `make up` runs the local Kafka broker and PostgreSQL cluster."""

    model_config = _config()

    data_dir: Path = PROJECT_ROOT / ".data"
    kafka_libs_dir: Path = PROJECT_ROOT / ".cache" / "kafka-libs"
    kafka_port: int = Field(default=9092, ge=1024, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1024, le=65535)
    kafka_heap_mb: int = Field(default=512, ge=256, le=8192)
    pg_port: int = Field(default=5433, ge=1024, le=65535)
    pg_user: str = "ledgergate"
    pg_password: str = "ledgergate"
    pg_database: str = "ledgergate"
    # A broker that is not answering metadata requests after this long has failed to start.
    start_timeout_s: float = Field(default=90.0, gt=0, le=600)
    # Below this much free disk the broker would start and then fail on its first segment roll.
    min_free_disk_mb: int = Field(default=1024, ge=0)

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{self.pg_user}:{self.pg_password}@127.0.0.1:{self.pg_port}/{database or self.pg_database}"


class CredentialSettings(BaseSettings):
    """What the API (issuing signing credentials) and the token-counter (verifying them) share. Every
    credential's secret is derived from this key (ledgergate.shared.credentials), so it is the one secret
    to keep: at least 32 characters, e.g. `openssl rand -hex 32`. Unset, the API issues no credentials
    and the token-counter refuses every signed message (unsigned ones pass where a tenant's mode allows)."""

    # hide_input_in_errors: a refused value (say, too short) is never echoed into an error or a log.
    model_config = SettingsConfigDict(**_config(), hide_input_in_errors=True)

    credential_master_key: SecretStr | None = Field(default=None, min_length=32, max_length=1024)

    @field_validator("credential_master_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose's ${VAR:-} and Kubernetes' optional secrets hand over "" for "not set".
        return None if value == "" else value

    def master_key_bytes(self) -> bytes | None:
        key = self.credential_master_key
        return None if key is None else key.get_secret_value().encode()


class TracingSettings(BaseSettings):
    """OpenTelemetry traces (ledgergate.shared.tracing; README, "Traces"). Off unless an endpoint is set."""

    model_config = _config()

    # OTLP/HTTP (protobuf) base URL of a collector, e.g. http://127.0.0.1:4318: spans go to <it>/v1/traces.
    # Empty (the default): no tracing, no span objects.
    otlp_endpoint: str = Field(default="", max_length=2048)
    # The resource's service.name; empty: ledgergate-<service> (ledgergate-router, ...).
    otel_service_name: str = Field(default="", max_length=128)
    # The share of traces recorded, decided by trace id (the same at every hop: a trace is whole or absent);
    # a request whose traceparent says "not sampled" is never recorded.
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # The batch span processor exports every this long (or sooner, at 512 spans), and at exit.
    otlp_schedule_delay_ms: int = Field(default=5_000, ge=10, le=60_000)
    otlp_timeout_ms: int = Field(default=10_000, ge=100, le=60_000)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint must be an http:// or https:// URL (OTLP/HTTP), or empty for no tracing")
        return value

    def otlp_traces_url(self) -> str:
        base = self.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


class MetricsSettings(BaseSettings):
    """Prometheus metrics (shared/metrics/, GET /metrics): what every process records and how tenants are labelled."""

    model_config = _config()

    # False records nothing and /metrics answers an empty page (the bench's "without metrics" run).
    metrics_enabled: bool = True
    # The tenant label, bounded because every tenant value is a series per label combination: "off" (no
    # tenant label), "top" (the metrics_tenant_top_n busiest tenants by name, every other one "other"),
    # "all" (every tenant: only for installs with few tenants). shared/metrics/tenants.py says how "top" picks.
    metrics_tenant_label: Literal["off", "top", "all"] = "off"
    metrics_tenant_top_n: int = Field(default=20, ge=1, le=500)
    # librdkafka statistics (statistics.interval.ms), the source of the consumer lag gauge: one JSON
    # document per interval parsed on the loop's thread, no broker round trip.
    metrics_lag_interval_ms: int = Field(default=5_000, ge=500, le=600_000)


class ServiceSettings(KafkaSettings, TracingSettings, MetricsSettings):
    """What every stream service needs; each service subclasses it with its own knobs."""

    model_config = _config()

    # Stable per instance: it names the Kafka transactional id, so a restarted instance fences its
    # predecessor. Run two instances of one service with two different ids.
    instance_id: str = Field(default="0", max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    max_batch: int = Field(default=500, ge=1, le=10000)
    # poll() returns on the first message, so a longer wait costs no latency, only idle wake-ups.
    poll_timeout_ms: int = Field(default=20, ge=0, le=1000)
    # Transactional services only: wait this long for a batch to fill (see RuntimeOptions.batch_linger_s).
    batch_linger_ms: int = Field(default=2, ge=0, le=100)
    # /healthz, /readyz and /metrics (shared/health.py) on this port; 0 serves none.
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=0, ge=0, le=65535)
    # Not ready once the loop has not turned, or waiting input has not moved, for this long.
    stall_after_ms: int = Field(default=15_000, ge=100, le=600_000)
    # SIGTERM ends the process within this long, even if a client call does not return. Below the
    # service runner's 30 s and Kubernetes' default 30 s grace period, so the process ends itself.
    shutdown_timeout_ms: int = Field(default=20_000, ge=100, le=600_000)


class CacheSettings(BaseSettings):
    """The response cache's memory bounds, in the services that hold its entries (policy, router)."""

    model_config = _config()

    # Entries per tenant and bytes per instance (least recently used leave first, counted as evictions).
    cache_entries_per_tenant_max: int = Field(default=10_000, ge=1, le=10_000_000)
    cache_bytes_max: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024**3)
    # Requests planned as cacheable whose answer is awaited (the policy service; oldest forgotten first):
    # about the requests in flight of the tenants whose policy caches.
    cache_pending_max: int = Field(default=100_000, ge=0, le=10_000_000)


class StateSettings(ServiceSettings):
    """What a service that folds budget.ledger into tenant state needs (budget-manager, policy, snapshotter)."""

    model_config = _config()

    # Tenants kept unpacked (about 2.4 KB each); the rest wait packed (about 300 B: shared/ledger/packing.py)
    # until a message or an expiry touches them. Bounds memory for a million tenants, mostly idle.
    # 50,000 unpacked and the rest packed hold a million tenants in about 1 GB (BENCHMARKS.md, memory).
    hot_tenants_max: int = Field(default=50_000, ge=1_000, le=10_000_000)
    # Restore from budget.snapshots and fold only the ledger's tail; False folds from offset 0 (a way to
    # rule snapshots out when chasing a problem).
    restore_from_snapshots: bool = True


class BudgetManagerSettings(StateSettings):
    model_config = _config()

    # A hold lives this long without a completion before it expires and releases its budget.
    reservation_ttl_ms: int = Field(default=600_000, ge=100, le=7 * 24 * 3_600_000)
    expiry_interval_ms: int = Field(default=500, ge=10, le=60_000)
    # When set, the service writes its balances here (JSON) so tests and operators can compare them
    # with a fold of the ledger.
    state_dump_path: Path | None = None


class TokenCounterSettings(ServiceSettings, CredentialSettings):
    model_config = _config()

    # A tenant that never set its auth mode (PUT /v1/tenants/{t}/credentials/mode): "optional" accepts its
    # unsigned requests, "required" refuses them. A signature that is present is verified either way.
    auth_default_mode: Literal["optional", "required"] = "optional"

    # Models without a known tiktoken encoding (claude-*, llama-*) are counted with this one.
    tokenizer_fallback: str | None = "o200k_base"
    max_messages: int = Field(default=1024, ge=1, le=100_000)
    max_output_tokens: int = Field(default=1_000_000, ge=1)
    # Input-token counts kept to settle completions whose usage is missing.
    remembered_requests: int = Field(default=200_000, ge=0, le=10_000_000)


class PolicySettings(StateSettings, CacheSettings):
    model_config = _config()

    # A file (YAML or JSON) that replaces the built-in default policy for tenants without one.
    default_policy_path: Path | None = None


class SnapshotterSettings(StateSettings):
    """The snapshotter (`ledgergate run snapshotter`): budget.ledger -> budget.snapshots."""

    model_config = _config()

    # A partition's dirty tenants are written (then its marker) after this many ledger entries or this
    # long, whichever comes first: a restore folds at most about this much tail.
    # 20,000 entries is about 1-2 s of tail fold on these 2-core machines (BENCHMARKS.md, restart).
    snapshot_every_entries: int = Field(default=20_000, ge=1, le=10_000_000)
    snapshot_every_ms: int = Field(default=5_000, ge=100, le=3_600_000)


class ProjectorSettings(ServiceSettings, PostgresSettings):
    """The projector: budget.ledger, gate.decisions, audit.log -> the PostgreSQL read model."""

    model_config = _config()

    # Messages per PostgreSQL transaction. Larger batches amortise its fixed cost (a dozen round
    # trips); a batch is only what is already fetched, so a quiet stream still commits promptly.
    projector_batch: int = Field(default=5000, ge=1, le=100_000)
    # The name under which consumer_offsets stores this projector's positions.
    projector_consumer: str = Field(default="projector", max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class AlerterSettings(ServiceSettings):
    """The alerts webhook (`ledgergate run alerter`): budget.alerts -> HTTP POST, dead-letter on failure."""

    model_config = _config()

    # Where every alert is POSTed as JSON; required. It may embed a token, so it is never logged whole.
    alert_webhook_url: str = ""
    # When set, each POST carries X-Ledgergate-Signature: sha256=<HMAC-SHA256 of the body>.
    alert_webhook_secret: SecretStr | None = None
    alert_max_attempts: int = Field(default=6, ge=1, le=20)
    # Exponential backoff between attempts: initial, doubling, capped (Retry-After is honoured up to the cap).
    alert_backoff_initial_ms: int = Field(default=500, ge=1, le=60_000)
    alert_backoff_max_ms: int = Field(default=30_000, ge=1, le=600_000)
    alert_timeout_s: float = Field(default=5.0, gt=0, le=60)


class AnomalySettings(ServiceSettings, PostgresSettings):
    """The spend/token-rate anomaly detector (`ledgergate run anomaly`, a faust app): usage.metered ->
    tumbling windows per tenant and workflow -> ANOMALY alerts on budget.alerts. Thresholds are per tenant,
    in its policy (`anomaly`), read from the read model's latest PolicyChanged (pg_dsn)."""

    model_config = _config()

    # The tumbling window. Rates are per minute whatever its length; tests and the demo use seconds.
    anomaly_window_s: int = Field(default=60, ge=1, le=3600)
    # A window closes once the wall clock is this far past its end (late completions still count), at the
    # next table sweep, which runs every anomaly_sweep_s.
    anomaly_late_s: int = Field(default=10, ge=1, le=3600)
    anomaly_sweep_s: float = Field(default=5.0, gt=0, le=600)
    # A series idle for more windows than this starts over (warm-up) instead of folding that many zeros.
    anomaly_max_gap_windows: int = Field(default=1440, ge=0, le=100_000)
    # How long a tenant's thresholds are used before its policy is read again.
    anomaly_policy_refresh_s: int = Field(default=60, ge=1, le=86_400)
    # Where a new consumer group starts on usage.metered (afterwards: its committed offsets).
    anomaly_start_from: Literal["latest", "earliest"] = "latest"
    # The consumer group evicts a worker that stopped heartbeating (kill -9, a lost host) after this long;
    # only then does a restarted or surviving worker get its partitions.
    anomaly_session_timeout_s: int = Field(default=30, ge=6, le=300)
    # faust's data directory (its memory-store tables keep only offsets there).
    anomaly_data_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "ledgergate-anomaly")


class RouterSettings(ServiceSettings, CacheSettings):
    model_config = _config()

    # Decisions remembered to answer a repeated request id identically.
    remembered_decisions: int = Field(default=200_000, ge=0, le=10_000_000)
    # The first repeat a partition sees after its assignment refills that memory from this many ledger
    # entries before it (not the assignment itself: a restart reaches its first decision without a fold).
    rebuild_window: int = Field(default=20_000, ge=0, le=1_000_000)
    # The router's transaction (audit records, offsets) stays open this long across batches before it
    # commits; its decisions go out at once either way (docs/decisions/0006). 0 (the default) commits
    # every batch: a transaction open most of the time is what a broker restart catches, and the broker
    # bounce test then found hanging transactions (librdkafka has no KIP-890 defence yet).
    audit_commit_interval_ms: int = Field(default=0, ge=0, le=5_000)


class ApiSettings(KafkaSettings, PostgresSettings, CredentialSettings, MetricsSettings):
    """The admin and query API (`ledgergate run api`): HTTP on top of the read model and budget.commands."""

    model_config = _config()

    # 127.0.0.1 by default: an API that can change budgets is not exposed unless someone asks for it
    # (docker-compose sets 0.0.0.0 inside its container).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # Every request body is small (a budget command, a policy document); anything bigger is refused
    # before it is read into memory.
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    api_pool_min: int = Field(default=1, ge=0, le=100)
    api_pool_max: int = Field(default=10, ge=1, le=100)
    # How long a request waits for a pooled connection / for Kafka to acknowledge a command before 503.
    api_pool_timeout_s: float = Field(default=5.0, gt=0, le=120)
    api_command_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Apply pending migrations at start (serialised with the projector by an advisory lock).
    api_migrate: bool = True
    api_start_timeout_s: float = Field(default=60.0, gt=0, le=600)


class ProxySettings(KafkaSettings, PostgresSettings, MetricsSettings):
    """The OpenAI-compatible gateway (`ledgergate run proxy`): /v1/chat/completions gated through Kafka and
    forwarded to the deployment the decision names."""

    model_config = _config()

    proxy_host: str = "127.0.0.1"
    proxy_port: int = Field(default=8100, ge=1, le=65535)
    # A chat request's body: prompts can be long, but not unbounded.
    proxy_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    proxy_messages_max: int = Field(default=1024, ge=1, le=100_000)
    proxy_decision_timeout_ms: int = Field(default=5_000, ge=100, le=120_000)
    proxy_upstream_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    proxy_upstream_connections_max: int = Field(default=200, ge=1, le=10_000)
    # When set, every deployment is served from this base URL (the local stand-in: tests, the demo, the bench);
    # otherwise each deployment's `base_url` in the deployment catalogue.
    proxy_upstream_base_url: str = Field(default="", max_length=2048)
    proxy_deployments_path: Path | None = None
    # A verified key is trusted this long before PostgreSQL is asked again (a revocation takes this long).
    proxy_key_cache_ttl_ms: int = Field(default=10_000, ge=0, le=3_600_000)
    proxy_keys_cached_max: int = Field(default=100_000, ge=1, le=10_000_000)
    # When no decision comes: refuse (503) or let calls through within the envelope (ledgergate.admission).
    proxy_on_unavailable: Literal["closed", "open"] = "closed"
    proxy_fail_open_micro_usd_per_min: int = Field(default=0, ge=0, le=10**12)
    proxy_tenants_max: int = Field(default=10_000, ge=1, le=1_000_000)
    proxy_start_timeout_s: float = Field(default=60.0, gt=0, le=600)
