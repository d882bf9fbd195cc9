"""Timing, memory and machine-information helpers (standard library and numpy only)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from typing import Callable, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


def write_atomic(path: "os.PathLike[str]", text: str) -> None:
    """Write a result file atomically (:func:`onnxcam._files.atomic_write`), creating its folder."""
    from pathlib import Path

    from onnxcam._files import atomic_write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def log(message: str) -> None:
    """Progress on stderr (stdout stays clean)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Memory (Linux /proc; resource.getrusage as the fallback)
# ----------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size (VmRSS), MiB."""
    kib = _status_kib("VmRSS")
    return kib / 1024.0 if kib is not None else float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM; ``ru_maxrss`` if /proc is unavailable), MiB."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak RSS above a baseline taken right after the imports.

    ``start()`` resets the high-water mark (when the kernel allows it) and records the baseline;
    ``peak_mib()`` is then ``VmHWM − baseline``: everything the contender added (weights, session,
    workspace, autograd buffers), at its highest point. Without the reset the baseline is the
    high-water mark at ``start()``, which after the imports is within a few MiB of the RSS.
    """

    def __init__(self) -> None:
        self.baseline_mib = float("nan")
        self.reset_supported = False

    def start(self) -> None:
        self.reset_supported = reset_peak_rss()
        self.baseline_mib = peak_rss_mib() if not self.reset_supported else rss_mib()

    def peak_mib(self) -> float:
        return peak_rss_mib() - self.baseline_mib

    def current_mib(self) -> float:
        return rss_mib() - self.baseline_mib

    def mark_setup(self) -> None:
        """End of the setup (session creation / model construction): remember the resident and the
        peak memory so far, then reset the high-water mark to measure the calls on their own."""
        self.setup_mib = self.current_mib()
        self.setup_peak_mib = self.peak_mib()
        self.run_reset = reset_peak_rss()

    def result(self) -> dict:
        """``peak_mib``: the peak over setup and calls; ``setup_mib``: resident after the setup;
        ``setup_peak_mib``: peak during the setup; ``run_peak_mib``: peak during the calls (None
        where the high-water mark cannot be reset)."""
        now = self.peak_mib()
        return {
            "peak_mib": max(now, self.setup_peak_mib),
            "setup_mib": self.setup_mib,
            "setup_peak_mib": self.setup_peak_mib,
            "run_peak_mib": now if self.run_reset else None,
            "peak_reset_supported": self.reset_supported,
        }


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def alternate(
    calls: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    min_rounds: int,
    max_rounds: int,
    budget_s: float,
    prewarmed: Mapping[str, float] | None = None,
) -> dict[str, list[float]]:
    """Time every callable once per round, call by call, in a rotating order.

    Warm-up: ``warmup`` interleaved rounds (not recorded) of the callables not in ``prewarmed``
    (name → duration of a call already made, e.g. during the memory phase). The number of recorded
    rounds is ``budget_s`` divided by the estimated round duration, clamped to
    ``[min_rounds, max_rounds]``; recording also stops once ``2 × budget_s`` is spent and
    ``min_rounds`` are done. Round ``r`` uses the order of ``calls`` rotated by ``(r // 2) mod k``
    and reversed when ``r`` is odd, so that no contender always comes first or always follows the
    same other one. Returns seconds per call, index ``i`` = round ``i`` for every name.
    """
    names = list(calls)
    last_call = dict(prewarmed or {})
    cold = [name for name in names if name not in last_call]
    for _ in range(warmup if cold else 0):
        for name in cold:
            t0 = time.perf_counter()
            calls[name]()
            last_call[name] = time.perf_counter() - t0
    for name in names:  # warmup=0: one untimed-for-statistics call gives the estimate
        if name not in last_call:
            t0 = time.perf_counter()
            calls[name]()
            last_call[name] = time.perf_counter() - t0
    round_s = sum(last_call[name] for name in names)
    rounds = int(np.clip(int(budget_s / max(round_s, 1e-9)), min_rounds, max_rounds))
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        shift = (r // 2) % len(names)
        order = names[shift:] + names[:shift]
        for name in (order[::-1] if r % 2 else order):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
        if r + 1 >= min_rounds and time.perf_counter() - start > 2 * budget_s:
            break
    return times


def summarize(seconds_per_call: Sequence[float], batch: int) -> dict:
    """Per-image latency (ms) median/p10/p90/mean/min and throughput (images/s, from the median)."""
    per_image_ms = np.asarray(seconds_per_call, dtype=np.float64) * 1000.0 / batch
    median = float(np.median(per_image_ms))
    return {
        "n": int(per_image_ms.size),
        "latency_ms_per_image": {
            "median": median,
            "p10": float(np.percentile(per_image_ms, 10)),
            "p90": float(np.percentile(per_image_ms, 90)),
            "mean": float(per_image_ms.mean()),
            "min": float(per_image_ms.min()),
        },
        "throughput_images_per_s": 1000.0 / median if median > 0 else float("nan"),
        "call_s_median": median * batch / 1000.0,
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Ratio of two contenders timed in the same rounds: median and p10/p90 of the per-round ratios,
    plus the ratio of the medians."""
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    n = min(a.size, b.size)
    r = a[:n] / b[:n]
    return {
        "median": float(np.median(r)),
        "p10": float(np.percentile(r, 10)),
        "p90": float(np.percentile(r, 90)),
        "ratio_of_medians": float(np.median(a[:n]) / np.median(b[:n])),
        "rounds": int(n),
    }


class CpuLoad:
    """CPU time used by *other* processes while a child job runs (the harness cannot stop them).

    From ``/proc/stat``: busy time of all CPUs minus the CPU time of the waited-for children of this
    process, as a share of ``wall × CPUs``; ``steal`` is time the hypervisor gave to other guests.
    """

    def __init__(self) -> None:
        import resource

        self._resource = resource
        self.t0 = time.perf_counter()
        self.stat0 = self._stat()
        self.child0 = self._children_cpu()
        self.load0 = self._loadavg()

    @staticmethod
    def _stat():
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + nice + system + irq + softirq, steal

    def _children_cpu(self) -> float:
        usage = self._resource.getrusage(self._resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def _loadavg():
        try:
            with open("/proc/loadavg") as handle:
                return float(handle.read().split()[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        stat1 = self._stat()
        cpus = os.cpu_count() or 1
        out = {"wall_s": wall, "loadavg_1min_start": self.load0, "loadavg_1min_end": self._loadavg()}
        if self.stat0 is not None and stat1 is not None and wall > 0:
            hz = os.sysconf("SC_CLK_TCK")
            busy = (stat1[0] - self.stat0[0]) / hz
            steal = (stat1[1] - self.stat0[1]) / hz
            ours = self._children_cpu() - self.child0
            out["other_cpu_share"] = max(0.0, busy - ours) / (wall * cpus)
            out["steal_share"] = steal / (wall * cpus)
        return out


def busy_share(sample_s: float = 1.0) -> float | None:
    """Share of all CPUs busy during the next ``sample_s`` seconds (call it while idle yourself)."""
    first = CpuLoad._stat()
    time.sleep(sample_s)
    second = CpuLoad._stat()
    if first is None or second is None:
        return None
    return (second[0] - first[0]) / os.sysconf("SC_CLK_TCK") / (sample_s * (os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------------
# Machine information
# ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        affinity = None
    mem_total = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    git = {}
    try:
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        git = {"commit": run("rev-parse", "HEAD") or None,
               "onnxcam_dirty": bool(run("status", "--porcelain", "--", "onnxcam"))}
    except (OSError, subprocess.SubprocessError):
        pass
    packages = ["onnxcam", "onnxruntime", "onnx", "torch", "torchvision", "captum", "grad-cam", "torchcam", "numpy"]
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "memory_gib": mem_total,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
        "git": git,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
