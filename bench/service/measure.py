"""What the benchmarks measure: wall and CPU time to the first byte and to
the end, RSS, and the bytes under temp folders, from /proc."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.service import BenchError

SAMPLE_SECONDS = 0.02  # temp folders and RSS
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_status_bytes(pid: int, key: str) -> int:
    """``VmRSS``, ``VmHWM``... of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no {key} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all the process's threads."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_bytes(root: Path) -> int:
    """Apparent size of the regular files under ``root``; 0 if it is gone."""
    total, stack = 0, [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


class Watcher:
    """Samples, every 20 ms in a thread, the bytes under some folders and the
    RSS of one process; keeps the maxima."""

    def __init__(self, folders: dict[str, Path], pid: int | None = None) -> None:
        self.folders = folders
        self.pid = pid
        self.peak_bytes = dict.fromkeys(folders, 0)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for name, folder in self.folders.items():
                self.peak_bytes[name] = max(self.peak_bytes[name], tree_bytes(folder))
            if self.pid is not None:
                with contextlib.suppress(OSError, BenchError):
                    self.peak_rss = max(self.peak_rss, proc_status_bytes(self.pid, "VmRSS"))
            if self._stop.wait(SAMPLE_SECONDS):
                return


@dataclass
class Transfer:
    seconds: float
    nbytes: int
    first_byte: float  # seconds to the response headers
    cpu_head: dict[str, float]  # CPU seconds per process before the first byte
    cpu_body: dict[str, float]  # ... and after it

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6

    @property
    def body_mbps(self) -> float:
        return self.nbytes / (self.seconds - self.first_byte) / 1e6


class Clock:
    """Wall time and the CPU time of some processes, from start to the first
    byte (response headers) and to the end."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu_start = self._cpu()
        self.start = time.perf_counter()
        self.first_byte = 0.0
        self.cpu_first_byte = self.cpu_start

    def _cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def mark_first_byte(self) -> None:
        self.first_byte = time.perf_counter() - self.start
        self.cpu_first_byte = self._cpu()

    def stop(self, nbytes: int) -> Transfer:
        seconds = time.perf_counter() - self.start
        cpu = self._cpu()
        head = {n: self.cpu_first_byte[n] - self.cpu_start[n] for n in self.pids}
        body = {n: cpu[n] - self.cpu_first_byte[n] for n in self.pids}
        return Transfer(seconds, nbytes, self.first_byte, head, body)
