"""``tickwire bench``: a multi-process load generator for any tickwire-protocol feed.

Sans-I/O pieces: :mod:`.histogram` (mergeable latency histogram), :mod:`.tally`
(per-message accounting), :mod:`.plan` (channels and connections per process),
:mod:`.report` (worker reports, merge, JSON and text). I/O: :mod:`.worker` (one
process of picows connections on uvloop), :mod:`.runner` (the parent), and
:mod:`.command` (the command line). Importing this package does not import picows.
"""

from __future__ import annotations

from .histogram import Histogram, bucket_bounds, bucket_index
from .plan import auto_procs, channel_list, plan
from .report import RESULT_FIELDS, BenchResult, WorkerReport, summarize
from .tally import Counters, Tally

__all__ = [
    "RESULT_FIELDS",
    "BenchResult",
    "Counters",
    "Histogram",
    "Tally",
    "WorkerReport",
    "auto_procs",
    "bucket_bounds",
    "bucket_index",
    "channel_list",
    "plan",
    "summarize",
]
