"""Smoke tests of the speed-benchmark harness (``python -m benchmarks.speed``).

They check the machinery (jobs, result schema, markdown writer, command line) on a tiny synthetic
CNN and on synthetic timings; no figure is asserted. Fast: a few seconds.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import measure, report, speed, worker  # noqa: E402
from benchmarks.peers import PEERS, TORCH_FORWARD, available  # noqa: E402

needs_torch_ort = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="torch and onnxruntime are needed to export and run the tiny model",
)
TIMING = dict(warmup=1, min_rounds=3, max_rounds=3, budget_s=0.0, mem_calls=1)


def _fake_times(rounds: int, base: float) -> list[float]:
    return [base * (1 + 0.01 * (i % 3)) for i in range(rounds)]


def _synthetic_jobs(batch: int) -> dict:
    """Job results shaped like the workers' output, from made-up timings."""
    times = {worker.FLOOR: _fake_times(5, 0.010 * batch), worker.CAM_ALL: _fake_times(5, 0.011 * batch),
             worker.CAM_LOGITS: _fake_times(5, 0.011 * batch), worker.FLOOR_AA: _fake_times(5, 0.010 * batch)}
    contenders = {k: measure.summarize(v, batch) for k, v in times.items()}
    contenders[worker.CAM_ALL].update(peak_mib=120.0, session_create_s=0.3)
    main = {"contenders": contenders, "times_s": times,
            "ratios": {k: measure.paired_ratio(v, times[worker.FLOOR]) for k, v in times.items() if k != worker.FLOOR},
            "contention": {"wall_s": 1.0, "other_cpu_share": 0.05, "steal_share": 0.0}}
    jobs = {"ort_main": main, "mem_floor": {"peak_mib": 100.0, "session_create_s": 0.2},
            "mem_cam_logits": {"peak_mib": 110.0, "session_create_s": 0.3}}
    for i, peer in enumerate(PEERS):
        ptimes = {peer: _fake_times(4, 0.03 * batch * (i + 1)), worker.FLOOR: _fake_times(4, 0.010 * batch)}
        if peer == "captum_liftcam":
            ptimes[TORCH_FORWARD] = _fake_times(4, 0.02 * batch)
        pc = {k: measure.summarize(v, batch) for k, v in ptimes.items()}
        pc[peer]["peak_mib"] = 300.0
        jobs[peer] = {"contenders": pc, "times_s": ptimes,
                      "ratios": {k: measure.paired_ratio(v, ptimes[worker.FLOOR]) for k, v in ptimes.items() if k != worker.FLOOR}}
    return jobs


def _results(rows: list[dict], **extra) -> dict:
    results = {
        "schema": report.SCHEMA, "machine": measure.machine_info(2),
        "settings": {"quick": True, "threads": 2}, "skipped_peers": {"torchcam": "torchcam is not installed"},
        "export": {}, "profile": {}, "rows": rows, "headline": report.headline(rows),
        "targets": report.targets(rows), "errors": [],
    }
    results.update(extra)
    return results


def test_schema_and_table_writer_on_synthetic_results(tmp_path):
    rows = []
    for batch in (1, 16):
        rows += report.build_rows("resnet50", batch, _synthetic_jobs(batch))
    results = _results(rows)
    json_path, md_path = report.write(results, tmp_path)

    loaded = json.loads(json_path.read_text())
    report.validate(loaded)
    contenders = {r["contender"] for r in loaded["rows"]}
    assert contenders == set(report.CONTENDERS)
    assert {(h["model"], h["batch"]) for h in loaded["headline"]} == {("resnet50", 1), ("resnet50", 16)}
    assert {t["target"].split(":")[0] for t in loaded["targets"]} == {"latency", "peak memory", "slower than onnxcam"}
    assert all(isinstance(t["met"], bool) for t in loaded["targets"])

    md = md_path.read_text()
    assert "| Model | Batch | Contender |" in md
    table = [line for line in md.splitlines() if line.startswith("| ResNet-50 |")]
    # main table: every contender except the A/A control, per batch; plus headline and targets rows
    assert sum(" (floor) |" in line or "(context)" in line for line in table) == 4
    assert "Skipped: torchcam (torchcam is not installed)" in md


def test_validate_rejects_a_broken_row():
    rows = report.build_rows("vgg16", 1, _synthetic_jobs(1))
    results = _results(rows)
    del results["rows"][0]["latency_ms_per_image"]
    with pytest.raises(ValueError, match="latency_ms_per_image"):
        report.validate(results)
    with pytest.raises(ValueError, match="schema"):
        report.validate(dict(_results([]), schema="other"))


def test_measure_helpers():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = measure.alternate(calls, warmup=1, min_rounds=3, max_rounds=3, budget_s=0.0, prewarmed={"a": 0.001})
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order[:2] == ["b", "c"]  # warm-up skips the pre-warmed callable
    assert order[2:] == list("abc") + list("cba") + list("bca")  # rotated every 2 rounds, odd rounds reversed
    s = measure.summarize(times["a"], 4)
    assert set(s["latency_ms_per_image"]) == {"median", "p10", "p90", "mean", "min"}
    r = measure.paired_ratio([2.0, 4.0], [1.0, 2.0])
    assert set(r) == {"median", "p10", "p90", "ratio_of_medians", "rounds"}
    mem = measure.PeakMemory()
    mem.start()
    assert isinstance(mem.peak_mib(), float)
    load = measure.CpuLoad().stop()
    assert "wall_s" in load
    info = measure.machine_info(2)
    assert {"cpu_model", "cpu_count", "threads", "versions", "date"} <= set(info)


def test_command_line_defaults():
    args = speed.parse_args(["--quick"])
    assert (args.models, args.batches, args.threads) == (["resnet50"], [1], 2)
    args = speed.parse_args([])
    assert args.models == ["resnet50", "vgg16", "mobilenet_v2"] and args.batches == [1, 16]
    with pytest.raises(SystemExit):
        speed.parse_args(["--models", "nope"])


_DRIVER = """
import json, sys
from benchmarks import worker
specs = json.load(open(sys.argv[1]))
json.dump([worker.run_job(spec) for spec in specs], open(sys.argv[2], "w"))
"""


def run_jobs(specs: list[dict], tmp: Path) -> list[dict]:
    """Run worker jobs, in order, in one separate process (the harness runs each in its own).

    Jobs install onnxruntime's *global* thread pool, after which a process can no longer create
    ordinary sessions; running them in the pytest process broke every later test that uses
    onnxruntime. One process for all the jobs of a test keeps the imports (torch, captum, ...) to
    one round.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    index = len(list(tmp.glob("specs_*.json")))
    spec_path, result_path = tmp / f"specs_{index}.json", tmp / f"results_{index}.json"
    spec_path.write_text(json.dumps(specs))
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(spec_path), str(result_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(result_path.read_text())


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench_cache")
    spec = {"kind": "export", "models": ["tiny"], "cache_dir": str(cache), "threads": 2}
    first, again = run_jobs([spec, spec], tmp_path_factory.mktemp("bench_jobs"))
    record = first["models"]["tiny"]
    assert again["models"]["tiny"]["cached"] and not record["cached"]
    return record


@needs_torch_ort
def test_jobs_on_a_tiny_model(tiny_export, tmp_path):
    base = dict(model="tiny", size=32, plain_path=tiny_export["plain_path"], cam_path=tiny_export["cam_path"],
                original_outputs=tiny_export["original_outputs"], threads=2, **TIMING)
    peers = [peer for peer in PEERS if available(peer)[0]]
    keys, specs = [], []
    for batch in (1, 2):
        spec = dict(base, batch=batch)
        for key, extra in [("mem_floor", dict(kind="ort_mem", which=worker.FLOOR)),
                           ("mem_cam_logits", dict(kind="ort_mem", which=worker.CAM_LOGITS)),
                           ("ort_main", dict(kind="ort_main", aa=True))] + [(p, dict(kind="peer", peer=p)) for p in peers]:
            keys.append((batch, key))
            specs.append(dict(spec, **extra))
    keys.append((None, "profile"))
    specs.append({"kind": "profile", "threads": 2, "runs": 2, "profile_dir": str(tmp_path / "profiles"),
                  "models": {"tiny": dict(plain_path=base["plain_path"], cam_path=base["cam_path"],
                                          original_outputs=base["original_outputs"], size=32)}})
    results = dict(zip(keys, run_jobs(specs, tmp_path)))
    rows = []
    for batch in (1, 2):
        jobs = {key: result for (b, key), result in results.items() if b == batch}
        new = report.build_rows("tiny", batch, jobs)
        assert {r["contender"] for r in new} >= {worker.FLOOR, worker.CAM_ALL, worker.CAM_LOGITS, worker.FLOOR_AA}
        assert {r["contender"] for r in new} >= set(peers)
        assert all(r["ratio_to_floor"]["rounds"] == 3 for r in new if r["contender"] != worker.FLOOR)
        rows += new
    profile = results[(None, "profile")]["models"]
    assert set(profile["tiny"]) == {"floor", "onnxcam", "onnxcam_logits_only"}
    assert profile["tiny"]["floor"]["group_nodes_per_run"]["onnxcam"] == 0
    assert profile["tiny"]["onnxcam"]["group_nodes_per_run"]["onnxcam"] > 0
    results = _results(rows, export={"tiny": tiny_export}, profile=profile)
    report.validate(results)
    md = report.to_markdown(results)
    assert "tiny CNN (test)" in md and "onnxruntime profile" in md


@needs_torch_ort
def test_worker_runs_as_a_subprocess(tiny_export, tmp_path):
    spec = dict(kind="ort_mem", which=worker.FLOOR, model="tiny", batch=1, size=32, threads=1, mem_calls=2,
                plain_path=tiny_export["plain_path"], cam_path=tiny_export["cam_path"],
                original_outputs=tiny_export["original_outputs"], result=str(tmp_path / "result.json"))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {"PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_path)], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert {"peak_mib", "session_create_s", "standalone"} <= set(result)
    assert result["imports_torch"] is False  # ORT-only jobs stay light: no torch in the process
