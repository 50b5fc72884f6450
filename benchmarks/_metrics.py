"""Shared measuring helpers: AWS calls by API, client CPU, peak memory."""

from __future__ import annotations

import resource
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class CallCounter:
    """Counts AWS API calls per operation via botocore's ``before-call`` event."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def attach(self, *clients: Any) -> CallCounter:
        for client in clients:
            client.meta.events.register("before-call.*.*", self._on_call)
        return self

    def detach(self, *clients: Any) -> None:
        for client in clients:
            client.meta.events.unregister("before-call.*.*", self._on_call)

    def _on_call(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def reset(self) -> None:
        self.calls.clear()

    def per(self, n: int) -> dict[str, float]:
        return {name: count / n for name, count in sorted(self.calls.items())}

    def total_per(self, n: int) -> float:
        return sum(self.calls.values()) / n


@dataclass
class Measurement:
    wall: float = 0.0
    cpu: float = 0.0
    peak_bytes: int = 0
    calls: dict[str, int] = field(default_factory=dict)


@contextmanager
def measure(
    counter: CallCounter | None = None, *, trace_memory: bool = True
) -> Iterator[Measurement]:
    """Wall time, process CPU time and (traced) peak memory of the block."""
    result = Measurement()
    if counter is not None:
        counter.reset()
    if trace_memory:
        tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result.wall = time.perf_counter() - wall
        result.cpu = time.process_time() - cpu
        if trace_memory:
            result.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if counter is not None:
            result.calls = dict(counter.calls)


def max_rss_mb() -> float:
    """Peak resident set of this process, in MB.

    Linux's ``ru_maxrss`` survives ``fork`` + ``exec``: a child started by a
    large benchmark process reports its parent's peak. ``VmHWM`` is the peak
    of the current address space only, so it is preferred where it exists.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
