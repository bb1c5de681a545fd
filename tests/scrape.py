"""GET /metrics of a running process, parsed: what the e2e and integration tests read metrics through."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample of the process listening on 127.0.0.1:`port`: name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a sample's values over the series whose labels include `labels`."""
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == x for k, x in labels.items()))


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A sample's values summed per value of one label."""
    out: dict[str, float] = {}
    for got, v in samples.get(name, []):
        out[got[label]] = out.get(got[label], 0) + v
    return out
