"""Prometheus metrics read the way Prometheus reads them: the text of a ``/metrics`` endpoint
scraped over HTTP and parsed with ``prometheus_client.parser``; or, for what this process
counted, from its registry (``counted``).

It imports nothing of the test suite, so that a benchmark can use it too.
"""

from __future__ import annotations

import urllib.request

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when the endpoint has none)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counted(name: str, **labels: str) -> float:
    """This process's sample ``name`` with ``labels`` (0 before its first count)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
