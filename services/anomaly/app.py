"""anomaly: usage.metered -> per-minute spend and token rates per tenant and workflow -> one ANOMALY
BudgetAlert per episode on budget.alerts, which the alerter delivers like any other alert.

A faust-streaming app, off the request's path (docs/decisions/0011-anomaly-on-faust.md): the gate's services
stay on the confluent-kafka runtime (0001), where faust's per-message cost would matter.

- `meter` (agent on usage.metered) adds each completion's spend (priced from the catalogue, as the ledger's
  settlement prices it) and tokens to a tumbling windowed table, `rates`, keyed by series (tenant or
  workflow, and metric; core.Series). Windows follow the record's Kafka timestamp (the metering time).
- A window closes once the wall clock is `anomaly_late_s` past its end, at faust's next table sweep; its
  total goes to the internal topic `anomaly.windows`, keyed by tenant (so co-partitioned).
- `detect` (agent on anomaly.windows) folds the closed window into the series' band (table `bands`) with
  core.observe and, when an episode opens, produces the alert and waits for its ack before the band is
  written: a crash in between repeats the alert with the same id (the receivers' idempotency key), never
  loses it; a window replayed after its band was written is older than the band's newest and is ignored.

Both tables are changelog-backed (faust recovers them on assignment). faust's at-least-once processing
can count a metered record twice after a crash (the windowed sum is restored, its source offset was not
committed yet): that inflates one window, documented, and is bounded by faust's commit interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from heapq import heappop
from typing import Any

import faust
import psycopg

from ledgergate import topics
from ledgergate.codec import codec
from ledgergate.errors import LedgergateError
from ledgergate.events import UsageMetered
from ledgergate.services.anomaly import core
from ledgergate.shared import metrics, readmodel
from ledgergate.shared.catalogue import PriceCatalogue, prices
from ledgergate.shared.errors import PolicyError, UnknownPriceError
from ledgergate.shared.health import Health
from ledgergate.shared.kafka.deadletter import dead_letter_at
from ledgergate.shared.kafka.seek import partition_count
from ledgergate.shared.ledger.periods import period_of
from ledgergate.shared.logging import configure
from ledgergate.shared.policy import AnomalyRule, Policy, default_policy, parse_policy
from ledgergate.shared.settings import AnomalySettings

SERVICE = "anomaly"
PRODUCER_LINGER_S = 0.02
QUIET_LOGGERS = ("aiokafka", "faust", "mode")


class ClosingTable(faust.Table):
    """A windowed table whose closed windows always reach on_window_close, and leave its changelog.

    faust-streaming 0.15.3's sweep (`Collection._del_old_keys`) calls on_window_close only for windows that
    start after the newest window it closed so far, one value for the whole table: the first partition's
    window closes, the same window of every other partition is dropped silently. It also removes a closed
    window from memory but not from the changelog, and a recovered window never gets a TTL, so after a
    restart it would never close. This sweep closes every (partition, window) once, writes a tombstone,
    and recovery registers what it restores."""

    async def _del_old_keys(self) -> None:
        window = self.window
        assert window is not None
        now_s = time.time()
        # Copies: the agent keeps adding partitions and windows while on_window_close awaits its send.
        for partition, timestamps in list(self._partition_timestamps.items()):
            while timestamps and window.stale(timestamps[0], now_s):
                range_end = heappop(timestamps)
                for key in list(self._partition_timestamp_keys.pop((partition, range_end), ())):
                    value = self.data.pop(key, None)
                    if value is None:
                        continue  # revoked meanwhile, or a duplicate heap entry
                    self.send_changelog(partition, key, None, value_serializer="raw")
                    await self.on_window_close(key, value)

    def apply_changelog_batch(self, batch: Any) -> None:
        events = list(batch)
        super().apply_changelog_batch(events)
        for event in events:
            key = self._to_key(event.key)
            if event.message.value is None:
                self._maybe_del_key_ttl(key, event.message.partition)
            else:
                self._maybe_set_key_ttl(key, event.message.partition)


class Thresholds:
    """A tenant's AnomalyRule, from its latest PolicyChanged in the read model, kept `refresh_s`. When
    PostgreSQL cannot answer, the last known rule (else the default policy's) is used and a warning logged:
    detection goes on through a database outage."""

    def __init__(self, dsn: str, refresh_s: int, log: Any) -> None:
        self.dsn, self.refresh_s, self.log = dsn, refresh_s, log
        self.base: Policy = default_policy()
        self.cache: dict[str, tuple[AnomalyRule, float]] = {}
        self.conn: psycopg.Connection | None = None

    async def rule(self, tenant_id: str) -> AnomalyRule:
        cached = self.cache.get(tenant_id)
        if cached is not None and time.monotonic() - cached[1] < self.refresh_s:
            return cached[0]
        rule = await asyncio.to_thread(self._read, tenant_id, cached[0] if cached else self.base.anomaly)
        self.cache[tenant_id] = (rule, time.monotonic())
        return rule

    def _read(self, tenant_id: str, fallback: AnomalyRule) -> AnomalyRule:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            row = readmodel.latest_policy_change(self.conn, tenant_id)
        except psycopg.Error as exc:
            self.log.warning("policy_unreadable", tenant_id=tenant_id, error=type(exc).__name__)
            with contextlib.suppress(Exception):
                if self.conn is not None:
                    self.conn.close()
            self.conn = None
            return fallback
        if row is None:
            return self.base.anomaly
        try:
            return parse_policy(row.body["policy_json"], self.base).anomaly
        except (PolicyError, KeyError) as exc:  # validated when set; a default is safer than a stop
            self.log.warning("policy_invalid", tenant_id=tenant_id, error=str(exc)[:200])
            return self.base.anomaly


def spend_of(catalogue: PriceCatalogue, usage: UsageMetered) -> int:
    """The completion's cost as the ledger would price it now (0 for a model the catalogue does not price)."""
    u = usage.usage
    version = catalogue.at(usage.completed_at_ms).version
    try:
        return catalogue.cost_micro_usd(version, usage.model, u.input_tokens, u.cached_input_tokens,
                                        u.output_tokens, reasoning_tokens=u.reasoning_tokens)
    except UnknownPriceError:
        return 0


def broker_url(settings: AnomalySettings) -> str:
    if settings.kafka_connection.security_protocol != "PLAINTEXT":
        # faust speaks to the cluster through aiokafka, not through KafkaConnection's librdkafka options.
        raise LedgergateError("the anomaly detector runs on PLAINTEXT brokers only so far; "
                              f"LEDGERGATE_KAFKA_SECURITY_PROTOCOL is {settings.kafka_connection.security_protocol}")
    return ";".join(f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",") if hp.strip())


def build(settings: AnomalySettings) -> faust.App:
    s = settings
    log = configure(SERVICE)
    metered_name, windows_name = s.topic(topics.METERED), s.topic(topics.ANOMALY_WINDOWS)
    partitions = partition_count(s.kafka_connection, metered_name)
    window_ms = s.anomaly_window_s * 1000
    datadir = s.anomaly_data_dir / s.instance_id  # one per instance: faust locks nothing, it only writes there
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        # The group and the changelog topics' names: <prefix>ledgergate-anomaly[-<table>-changelog].
        f"{s.topic_prefix}ledgergate-{SERVICE}", broker=broker_url(s), value_serializer="raw",
        key_serializer="raw", topic_disable_leader=True, web_enabled=False, producer_acks=-1,
        consumer_auto_offset_reset=s.anomaly_start_from, topic_partitions=partitions,
        table_cleanup_interval=s.anomaly_sweep_s, broker_session_timeout=s.anomaly_session_timeout_s,
        datadir=str(datadir), store="memory://",
        # Every table update is a changelog record: without a linger aiokafka sends each in a request of its
        # own, which was most of the worker's CPU (docs/decisions/0011). Off the request's path, 20 ms is free.
        producer_linger=PRODUCER_LINGER_S,
    )
    metered = app.topic(metered_name, key_type=bytes, value_type=bytes)
    windows = app.topic(windows_name, key_type=bytes, value_type=bytes)
    alerts = app.topic(s.topic(topics.ALERTS), key_type=bytes, value_type=bytes)
    deadletter = app.topic(s.topic(topics.DEADLETTER), key_type=bytes, value_type=bytes)
    catalogue = prices()
    thresholds = Thresholds(s.pg_dsn, s.anomaly_policy_refresh_s, log)
    # /healthz and /readyz like every stream process (shared/health.py): the event loop turns (a timer),
    # and the windows the detector folds are counted in the report.
    health = Health(SERVICE, s.stall_after_ms)
    health.detail = {"windows_folded": 0, "alerts": 0}
    metrics.configure(SERVICE, s)
    if s.health_port:
        health.serve(s.health_host, s.health_port)

    @app.task
    async def quiet() -> None:
        # The worker sets logging up as it starts; a debug record per produce request is measurable cost.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    @app.timer(interval=1.0)
    async def heartbeat() -> None:
        health.backlog_is(False)  # faust does not tell its lag here; the loop turning is what is checked

    async def closed(key: tuple[str, tuple[float, float]], total: int) -> None:
        series_key, (start_s, _end_s) = key
        series = core.Series.parse(series_key)
        start_ms = round(start_s * 1000)
        await windows.send(key=series.tenant_id.encode(), value=codec().encode("AnomalyWindow", {
            "tenant_id": series.tenant_id, "series": series_key, "window_start_ms": start_ms,
            "window_ms": window_ms, "total": int(total), "closed_at_ms": time.time_ns() // 1_000_000}))

    rates_table = ClosingTable(app, name="rates", default=int, partitions=partitions, key_type=str,
                               value_type=int, on_window_close=closed,  # type: ignore[arg-type]  # int works
                               beacon=app.tables.beacon)
    app.tables.add(rates_table)
    # Tumbling, by the record's timestamp; a window's key in the changelog is [series, [start, end]].
    rates = rates_table.tumbling(s.anomaly_window_s, expires=s.anomaly_late_s).relative_to_stream()
    # Keys str, values the Band's record as JSON (value_type None: faust's json serializer, and its changelog
    # recovery hands back the dict; value_type=dict would make recovery look for a faust Model and fail).
    bands = app.Table("bands", default=None, partitions=partitions, key_type=str, value_type=None)

    async def dead(event: Any, code: str, message: str) -> None:
        m = event.message
        value, headers = dead_letter_at(m.topic, m.partition, m.offset, event.key, event.value, SERVICE, code,
                                        message)
        log.warning("dead_lettered", topic=m.topic, partition=m.partition, offset=m.offset, error=code)
        as_bytes = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in headers]
        await (await deadletter.send(key=event.key, value=value, headers=as_bytes))

    @app.agent(metered)
    async def meter(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                name, rec = codec().decode(event.value)
                if name != "UsageMetered":
                    raise LedgergateError(f"{name} does not belong on {event.message.topic}")
                usage = UsageMetered.from_record(rec)
            except Exception as exc:  # undecodable bytes or another event: a dead letter, never a stop
                await dead(event, "malformed", str(exc))
                continue
            for series, amount in core.contributions(usage, spend_of(catalogue, usage)):
                rates[series.key()] += amount

    @app.agent(windows)
    async def detect(stream: faust.StreamT) -> None:
        async for event in stream.events():
            name, rec = codec().decode(event.value)
            assert name == "AnomalyWindow", name  # our own topic: anything else is a bug, not input
            series = core.Series.parse(rec["series"])
            rule = await thresholds.rule(series.tenant_id)
            if not rule.enabled:
                continue
            stored = bands.get(rec["series"])
            band = core.Band() if stored is None else core.Band.from_record(stored)
            band, anomaly = core.observe(band, series, rec["window_start_ms"], rec["window_ms"], rec["total"], rule,
                                         s.anomaly_max_gap_windows)
            if anomaly is not None:
                now_ms = time.time_ns() // 1_000_000
                alert = core.alert_record(anomaly, period_of(anomaly.window_start_ms)[0], now_ms)
                await (await alerts.send(key=series.tenant_id.encode(), value=codec().encode("BudgetAlert", alert)))
                log.info("anomaly", tenant_id=series.tenant_id, scope_type=series.scope_type,
                         scope_id=series.scope_id, metric=series.metric, alert_id=anomaly.alert_id,
                         observed_per_min=round(anomaly.observed_per_min),
                         expected_per_min=round(anomaly.expected_per_min))
            bands[rec["series"]] = band.to_record()
            health.detail["windows_folded"] += 1
            health.detail["alerts"] += anomaly is not None
            metrics.observe_window(series.metric, series.scope_type, anomaly is not None)

    log.info("anomaly_built", partitions=partitions, window_s=s.anomaly_window_s, late_s=s.anomaly_late_s,
             sweep_s=s.anomaly_sweep_s, start_from=s.anomaly_start_from)
    return app


def run(settings: AnomalySettings | None = None) -> None:
    s = settings or AnomalySettings()
    app = build(s)
    # faust's own worker: signals, its services' start and stop, the event loop. It exits non-zero when a
    # service crashes, for the supervisor to restart it.
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
