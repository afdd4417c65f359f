"""Peak resident memory, sampled in a background thread while a labelled phase runs."""

from __future__ import annotations

import threading

from tasc_edge.errors import require


class RssSampler:
    """`with sampler.phase("tasc-spec"): ...` records the peak RSS seen while inside."""

    def __init__(self, interval_s: float = 0.005) -> None:
        psutil = require("psutil", "runtime")
        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.peak: dict[str, int] = {}
        self._label: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def phase(self, label: str) -> "_Phase":
        return _Phase(self, label)

    def _record(self) -> None:
        label = self._label  # read once: the main thread may clear it between two reads
        if label is not None:
            self.peak[label] = max(self.peak.get(label, 0), self.rss())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()


class _Phase:
    def __init__(self, sampler: RssSampler, label: str) -> None:
        self.sampler, self.label = sampler, label

    def __enter__(self) -> None:
        self.sampler._label = self.label
        self.sampler._record()

    def __exit__(self, *exc: object) -> None:
        self.sampler._record()
        self.sampler._label = None
