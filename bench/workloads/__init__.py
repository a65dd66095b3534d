"""The workloads W1-W11; each module has TITLE, DESCRIPTION, METRIC, SIZES, expected(), IMPLS.

Optional: ``PEER_SIZES`` (sizes for slow implementations in the default run, so the suite stays
within a few minutes; throughput is what is compared), ``NOTES``, ``SKIPPED`` (implementation ->
why it is not run), ``BASELINE`` (the implementation ratios are taken to; ``trio`` by default),
``probe(impl)`` (a baseline measured in the child itself, see ``bench.child``) with ``ceiling``
(time workloads: the items/s the probe allows) or ``PROBE_FIGURES`` (latency workloads: probe
readings shown next to the run's); ``RESULT_FIGURES`` (latency workloads: more of the run's own
figures, e.g. how many samples the percentiles are over).
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "W1": "w1_peer",
    "W2": "w2_transforms",
    "W3": "w3_io",
    "W4": "w4_memory",
    "W5": "w5_latency",
    "W6": "w6_acks",
    "W7": "w7_wakeup",
    "W8": "w8_ack_cost",
    "W9": "w9_kafka",
    "W10": "w10_adaptive",
    "W11": "w11_tracing",
}


def load(key: str) -> ModuleType:
    """The module of workload ``key`` (``"W1"`` ...)."""
    return importlib.import_module(f"{__name__}.{MODULES[key]}")
