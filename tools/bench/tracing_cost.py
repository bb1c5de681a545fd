"""The CPU a hop's tracing costs per message, off and on, in one process (no broker): what
shared/tracing.py adds to a service's handling of one request, beside the few hundred microseconds that
handling costs. `python -m ledgergate.tools.bench.tracing_cost [--messages N]` prints microseconds per hop.

On, spans go through the real BatchSpanProcessor to an exporter that drops them, so the figure is the
span's own cost (creation, attributes, end, queueing), not an OTLP collector's network.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from ledgergate.events import InvocationCounted
from ledgergate.shared.kafka.headers import Headers
from ledgergate.shared.settings import TracingSettings
from ledgergate.shared.tracing import Tracing
from ledgergate.tracecontext import TraceParent, to_carrier


class _Message:
    """What a hop reads of a consumed message."""

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def headers(self) -> Headers:
        return self._headers

    def topic(self) -> str:
        return "invocation.counted"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 1


def _dropping_processor() -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return BatchSpanProcessor(Drop(), max_queue_size=65_536)


def per_hop_us(tracing: Tracing, messages: int) -> float:
    carrier = to_carrier(TraceParent.new())
    counted = InvocationCounted("r1", "acme", "wf", "bot", "gpt-4o", 256, "NORMAL", None, None, {}, 1, carrier,
                                17, 17, "o200k_base", 100, "0" * 64, None, 2)
    msg = _Message([("request_id", b"r1"), ("lg-t-count", b"1795000000000000")])
    started = time.perf_counter()
    for _ in range(messages):
        # What the policy does per request: continue the record's context, describe, write its own on.
        with tracing.hop("plan", msg) as hop:  # type: ignore[arg-type]
            hop.continues(counted.trace_context)
            hop.describe(counted)
            _ = hop.context
            hop.headers([("request_id", b"r1")])
    return (time.perf_counter() - started) / messages * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args(argv)
    off = Tracing("policy", TracingSettings())
    on = Tracing("policy", TracingSettings(), processor=_dropping_processor())
    tenth = Tracing("policy", TracingSettings(otel_sample_ratio=0.1), processor=_dropping_processor())
    provider = on.provider
    assert provider is not None
    bare = provider.get_tracer("bare")
    result: dict[str, Any] = {"messages": args.messages}
    for name, tracing in (("off", off), ("on", on), ("on_sampled_10pct", tenth)):
        per_hop_us(tracing, 1000)  # warm-up
        result[f"{name}_us_per_hop"] = round(per_hop_us(tracing, args.messages), 2)
    # The SDK's own floor: one span started and ended, no attributes.
    started = time.perf_counter()
    for _ in range(args.messages):
        bare.start_span("bare").end()
    result["sdk_bare_span_us"] = round((time.perf_counter() - started) / args.messages * 1e6, 2)
    on.shutdown()
    tenth.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
