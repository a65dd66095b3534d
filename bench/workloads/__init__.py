"""The workloads W1-W6; each module has TITLE, DESCRIPTION, METRIC, SIZES, expected(), IMPLS.

Optional: ``PEER_SIZES`` (sizes for slow implementations in the default run, so the suite stays
within a few minutes; throughput is what is compared), ``NOTES``, ``SKIPPED`` (implementation ->
why it is not run), ``BASELINE`` (the implementation ratios are taken to; ``trio`` by default).
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
}


def load(key: str) -> ModuleType:
    """The module of workload ``key`` (``"W1"`` ...)."""
    return importlib.import_module(f"{__name__}.{MODULES[key]}")
