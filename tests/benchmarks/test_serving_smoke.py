"""Smoke test of the serving benchmark (``python -m benchmarks.serving``) on the tiny synthetic CNN.

Checks the machinery — switchable export and its cache stamp, alternated timing, memory
subprocesses, JSON and table — with no figure asserted. A subprocess, because the benchmark
installs onnxruntime's global thread pool, which a process can do once.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="torch and onnxruntime are needed to export and run the tiny model",
)


def run_serving(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.serving", "--models", "tiny", "--batches", "1", "2",
                           "--budget", "0", "--threads", "1", "--out", str(out), *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_serving_benchmark_on_the_tiny_model(tmp_path):
    done = run_serving(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "serving.json").read_text())
    (res,) = results["results"]
    assert res["model"] == "tiny" and Path(res["switch_path"]).exists()
    assert [t["batch"] for t in res["timing"]] == [1, 2]
    for t in res["timing"]:
        assert t["rounds"] >= 5  # the minimum, with a zero budget
        assert set(t["latency"]) == {"floor", "switch_off", "switch_on", "export_all", "export_logits"}
        for key in ("switch_off_over_floor", "switch_on_over_export", "export_logits_over_floor"):
            assert t[key]["p10"] <= t[key]["median"] <= t[key]["p90"] and t[key]["median"] > 0
    assert set(res["memory_mib"]) == {"floor", "switch_off", "switch_on", "export"}
    assert all(math.isfinite(v) for v in res["memory_mib"].values())
    table = (tmp_path / "serving.md").read_text()
    assert table.strip() == done.stdout.strip()
    assert table.count("| tiny CNN (test) |") == 3  # two timing rows and one memory row

    # The switchable export is cached by the exporter's fingerprint: a second run reuses it.
    stamp_time = Path(res["switch_path"]).stat().st_mtime_ns
    again = run_serving(tmp_path, "--no-memory")
    assert again.returncode == 0, again.stderr[-3000:]
    assert Path(res["switch_path"]).stat().st_mtime_ns == stamp_time
    assert "| nan | nan |" in (tmp_path / "serving.md").read_text()
