"""Read a live server's /metrics with the Prometheus text parser."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(base_url: str) -> list[Sample]:
    """Every sample the server exports now."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(base_url: str, name: str, **labels: str) -> float:
    """The sample `name` whose labels include `labels`; 0 when it is not exported (yet)."""
    for sample in samples(base_url):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last result."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def bucket(base_url: str, histogram: str, le: str) -> float:
    """Cumulative count of histogram `histogram` (full name, no suffix) in bucket `le`."""
    return value(base_url, f"{histogram}_bucket", le=le)


def histogram_state(base_url: str, histogram: str) -> tuple[float, float]:
    """`(count, sum)` of histogram `histogram` (full name, no suffix), from one scrape."""
    found = {s.name: s.value for s in samples(base_url) if s.name.startswith(histogram)}
    return found.get(f"{histogram}_count", 0.0), found.get(f"{histogram}_sum", 0.0)
