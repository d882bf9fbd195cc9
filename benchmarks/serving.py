"""Serving both kinds of request from one graph: ``python -m benchmarks.serving``.

onnxruntime runs every node of a graph whatever outputs are fetched (``benchmarks/README.md``,
profile), so fetching only the logits from an ordinary export still pays for the sweep. A
``switchable`` export (:mod:`onnxcam.exporters.switch`) puts the explanation behind an ``If`` on the
bool input ``onnxcam_explain``. This measures, per model and batch, in one process with the sessions
alternated call by call (the speed harness's method, :func:`benchmarks.measure.alternate`):

- ``switch off / floor``: the switchable graph fed ``onnxcam_explain = False`` against the plain
  model (target: ≈ 1, the price of a plain request);
- ``switch on / export``: the switchable graph fed True against the ordinary export, all outputs
  fetched (target: ≈ 1, the price of the ``If``);
- ``export logits-only / floor``: the ordinary export fetching only the logits (what a caller pays
  without the switch);
- peak memory of the switchable session alone and of the plain one alone (each in a fresh
  subprocess), and their ratio.

The models are the speed benchmark's (``benchmarks/results/cache``; exported there if absent). Writes
``serving.json`` and ``serving.md`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import measure
from benchmarks.models import DEFAULT_MODELS, MODELS

REPO = Path(__file__).resolve().parent.parent


def _cached_models(names: list[str], cache: Path, threads: int) -> dict[str, dict]:
    from benchmarks.worker import job_export

    return job_export({"models": names, "cache_dir": str(cache), "threads": threads})["models"]


def switchable_path(record: dict) -> str:
    """Export (once) the switchable graph of the cached model, the same way as the cached export."""
    import torch

    import onnxcam
    from benchmarks.models import build_model, target_module

    name = record["model"]
    cam_path = Path(record["cam_path"])
    path = cam_path.with_name(cam_path.name.replace(".cam.onnx", ".switch.onnx"))
    stamp = path.with_suffix(".json")
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == record["fingerprint"]:
        return str(path)
    model = build_model(name)
    size = MODELS[name].input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    onnxcam.save(onnxcam.export_torch(model, x, target_module(name, model), switchable=True), path, overwrite=True)
    stamp.write_text(json.dumps({"fingerprint": record["fingerprint"]}))
    return str(path)


def time_model(record: dict, switch: str, batch: int, threads: int, budget_s: float) -> dict:
    from benchmarks.worker import OrtCall, cam_config, ort_session

    x = np.random.default_rng(0).standard_normal((batch, 3, MODELS[record["model"]].input_size,
                                                  MODELS[record["model"]].input_size), dtype=np.float32)
    floor, _ = ort_session(record["plain_path"], threads)
    cam, _ = ort_session(record["cam_path"], threads, config=cam_config({"cam_path": record["cam_path"]}))
    sw, _ = ort_session(switch, threads, config=cam_config({"cam_path": switch}))
    calls = {
        "floor": OrtCall(floor, x),
        "switch_off": OrtCall(sw, x, explain=False),
        "switch_on": OrtCall(sw, x, explain=True),
        "export_all": OrtCall(cam, x),
        "export_logits": OrtCall(cam, x, record["original_outputs"]),
    }
    times = measure.alternate(calls, warmup=2, min_rounds=5, max_rounds=200, budget_s=budget_s)
    return {
        "batch": batch,
        "rounds": len(times["floor"]),
        "latency": {k: measure.summarize(v, batch) for k, v in times.items()},
        "switch_off_over_floor": measure.paired_ratio(times["switch_off"], times["floor"]),
        "switch_on_over_export": measure.paired_ratio(times["switch_on"], times["export_all"]),
        "export_logits_over_floor": measure.paired_ratio(times["export_logits"], times["floor"]),
    }


_MEMORY = """
import json, sys, numpy as np
from benchmarks import measure
from benchmarks.worker import OrtCall, cam_config, ort_session
path, size, explain, threads, hints = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
mem = measure.PeakMemory(); mem.start()
config = cam_config({"cam_path": path}) if hints == "1" else None
s, _ = ort_session(path, threads, config=config)
mem.mark_setup()
call = OrtCall(s, x, explain=explain != "false")
for _ in range(3): call()
print(json.dumps(mem.result()))
"""


def peak_memory(path: str, size: int, explain: str, threads: int, hints: bool = True) -> float:
    """Peak MiB of one session alone in a fresh process (onnxcam graphs with their recommended config)."""
    proc = subprocess.run([sys.executable, "-c", _MEMORY, path, str(size), explain, str(threads), "1" if hints else "0"],
                          cwd=str(REPO),
                          capture_output=True, text=True, check=True, timeout=600)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"])


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} threads, onnxruntime "
             f"{meta['onnxruntime']}; median of per-round ratios (p10–p90), sessions alternated call by call.", "",
             "| Model | Batch | switch off / floor | switch on / export | export logits-only / floor | rounds |",
             "|---|---:|---:|---:|---:|---:|"]

    def r(d: dict) -> str:
        return f"{d['median']:.3f} ({d['p10']:.3f}–{d['p90']:.3f})"

    for res in results:
        for t in res["timing"]:
            lines.append(f"| {MODELS[res['model']].label} | {t['batch']} | {r(t['switch_off_over_floor'])} | "
                         f"{r(t['switch_on_over_export'])} | {r(t['export_logits_over_floor'])} | {t['rounds']} |")
    lines += ["", "| Model | peak MiB: floor | switchable, off | switchable, on | ordinary export | switchable on / floor |",
              "|---|---:|---:|---:|---:|---:|"]
    for res in results:
        m = res["memory_mib"]
        lines.append(f"| {MODELS[res['model']].label} | {m['floor']:.0f} | {m['switch_off']:.0f} | {m['switch_on']:.0f} | "
                     f"{m['export']:.0f} | {m['switch_on'] / m['floor']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per (model, batch)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = _cached_models(args.models, args.out / "cache", args.threads)
    # Every export before the first timed session: the timing sessions install onnxruntime's global
    # thread pool, after which the exporter's own (per-session-thread) sessions cannot be created.
    switches = {name: switchable_path(records[name]) for name in args.models}
    results = []
    for name in args.models:
        record, switch = records[name], switches[name]
        res = {"model": name, "switch_path": switch, "timing": []}
        for batch in args.batches:
            measure.log(f"serving {name} batch {batch}")
            res["timing"].append(time_model(record, switch, batch, args.threads, args.budget))
        if not args.no_memory:
            size = MODELS[name].input_size
            res["memory_mib"] = {
                "floor": peak_memory(record["plain_path"], size, "none", args.threads, hints=False),
                "switch_off": peak_memory(switch, size, "false", args.threads),
                "switch_on": peak_memory(switch, size, "true", args.threads),
                "export": peak_memory(record["cam_path"], size, "none", args.threads),
            }
        results.append(res)
    import onnxruntime

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": measure.cpu_model(), "threads": args.threads,
            "onnxruntime": onnxruntime.__version__}
    measure.write_atomic(args.out / "serving.json", json.dumps({"meta": meta, "results": results}, indent=2))
    if args.no_memory:
        for res in results:
            res["memory_mib"] = {"floor": float("nan"), "switch_off": float("nan"), "switch_on": float("nan"),
                                 "export": float("nan")}
    table = markdown(results, meta)
    measure.write_atomic(args.out / "serving.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
