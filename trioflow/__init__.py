"""trioflow: event pipelines for Trio.

Stages are plain functions composed with ``|``, run as tasks of one nursery, joined by bounded
queues that carry back-pressure; every message is acknowledged to its source exactly once.

Examples:
    >>> import trioflow as tf
    >>> pipeline = tf.from_iterable(range(10)) | tf.process(double, n=4) | tf.sink(save)
    >>> report = trio.run(pipeline.run)
"""

from ._batches import Batch as Batch
from ._batches import BatchInfo as BatchInfo
from ._consumer import Consumer as Consumer
from ._consumer import ConsumerContext as ConsumerContext
from ._decode import DecodeError as DecodeError
from ._decode import decode as decode
from ._decorator import stage as stage
from ._exceptions import Fatal as Fatal
from ._exceptions import InvalidPipeline as InvalidPipeline
from ._exceptions import PipelineError as PipelineError
from ._exceptions import StageTimeout as StageTimeout
from ._exceptions import TrioflowError as TrioflowError
from ._flow import Adaptive as Adaptive
from ._flow import Breaker as Breaker
from ._manager import ConsumerManager as ConsumerManager
from ._manager import ConsumerStatus as ConsumerStatus
from ._message import Message as Message
from ._pipeline import Pipeline as Pipeline
from ._pipeline import collect as collect
from ._report import RunReport as RunReport
from ._report import StageStats as StageStats
from ._retry import Backoff as Backoff
from ._retry import Retry as Retry
from ._runner import PipelineHandle as PipelineHandle
from ._sources import from_aiter as from_aiter
from ._sources import from_channel as from_channel
from ._sources import from_iterable as from_iterable
from ._sources import merge as merge
from ._stages import DEFAULT_BUFFER as DEFAULT_BUFFER
from ._stages import Stage as Stage
from ._stages import batch as batch
from ._stages import filter as filter
from ._stages import flat_map as flat_map
from ._stages import process as process
from ._stages import rate_limit as rate_limit
from ._stages import route as route
from ._stages import sink as sink
from ._stages import unbatch as unbatch

__all__ = [
    "DEFAULT_BUFFER",
    "Adaptive",
    "Backoff",
    "Batch",
    "BatchInfo",
    "Breaker",
    "Consumer",
    "ConsumerContext",
    "ConsumerManager",
    "ConsumerStatus",
    "DecodeError",
    "Fatal",
    "InvalidPipeline",
    "Message",
    "Pipeline",
    "PipelineError",
    "PipelineHandle",
    "Retry",
    "RunReport",
    "Stage",
    "StageStats",
    "StageTimeout",
    "TrioflowError",
    "batch",
    "collect",
    "decode",
    "filter",
    "flat_map",
    "from_aiter",
    "from_channel",
    "from_iterable",
    "merge",
    "process",
    "rate_limit",
    "route",
    "sink",
    "stage",
    "unbatch",
]

__version__ = "0.1.0"
