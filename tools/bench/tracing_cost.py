"""The CPU tracing costs per decision, off and on, in one process (no broker): what shared/tracing.py
adds to the services' handling of one request, beside the few hundred microseconds that handling costs.
`python -m ledgergate.tools.bench.tracing_cost [--messages N]` prints microseconds per decision (the four
hops of one request, in one process).

On, spans go through the real BatchSpanProcessor to an exporter that drops them, so the figure is the
span's own cost (creation, attributes, end, queueing), not an OTLP collector's network.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ledgergate.events import InvocationCounted
from ledgergate.shared.kafka.headers import Headers
from ledgergate.shared.settings import TracingSettings
from ledgergate.shared.tracing import Tracing, header_carrier
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


def per_decision_us(tracing: Tracing, messages: int) -> float:
    """What the four hops of one request do with tracing, as the services call it (shared/tracing.py):
    token-counter and policy continue the record's context and write theirs on the next record, the
    budget-manager writes its own in the ledger entry's headers, the router reads those for the decision."""
    carrier = to_carrier(TraceParent.new())
    counted = InvocationCounted("r1", "acme", "wf", "bot", "gpt-4o", 256, "NORMAL", None, None, {}, 1, carrier,
                                17, 17, "o200k_base", 100, "0" * 64, None, 2)
    stamps: Headers = [("request_id", b"r1"), ("lg-t-count", b"1795000000000000")]
    msg = _Message(stamps)
    started = time.perf_counter()
    for _ in range(messages):
        context: Mapping[str, str] = carrier
        for operation in ("count", "plan"):
            with tracing.hop(operation, msg) as hop:  # type: ignore[arg-type]
                hop.continues(context)
                hop.describe(counted)
                context = hop.context
        with tracing.hop("reserve", msg) as hop:  # type: ignore[arg-type]
            hop.continues(context)
            hop.describe(counted)
            ledger_msg = _Message(hop.headers(list(stamps)))
        decision_context = header_carrier(ledger_msg)  # type: ignore[arg-type]
        with tracing.hop("decide", ledger_msg, root=True) as hop:  # type: ignore[arg-type]
            hop.describe(counted)
        assert decision_context
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
        per_decision_us(tracing, 1000)  # warm-up
        result[f"{name}_us_per_decision"] = round(per_decision_us(tracing, args.messages), 2)
    # The SDK's own floor: one span started and ended, no attributes (a decision has four).
    started = time.perf_counter()
    for _ in range(args.messages):
        bare.start_span("bare").end()
    result["sdk_bare_span_us"] = round((time.perf_counter() - started) / args.messages * 1e6, 2)
    on.shutdown()
    tenth.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
