"""Speed benchmark: ``python -m benchmarks.speed [--quick] [--out DIR]``.

Measures, on CPU with the same thread count for every contender, the per-image latency (median and
p10/p90), the throughput and the peak memory of

* the plain onnxruntime forward of the original model (the floor);
* the onnxcam-exported graph fetching every output, and the same graph fetching only the original
  logits (issue 4 item 3: does onnxruntime skip the sweep then?);
* the authors' LIFT-CAM recipe (forward hook + captum ``DeepLift`` on the head), pytorch-grad-cam
  ``GradCAM`` and torchcam ``GradCAM`` on the same layer (skipped, and said so, when not installed);

for ResNet-50 @ layer4, VGG16 @ features.29 and MobileNetV2 @ features.18 at 224 px, batch 1 and 16;
plus export time, session-creation time and an onnxruntime profile of the exported graphs.
Every ratio to the floor is measured by alternating the contender with the floor session call by
call in one process (see ``benchmarks/README.md``). Writes ``OUT/speed.json`` and ``OUT/speed.md``;
progress goes to stderr, the markdown to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import measure, report
from benchmarks.measure import log
from benchmarks.models import DEFAULT_MODELS, MODELS
from benchmarks.peers import PEERS, available
from benchmarks.worker import CAM_LOGITS, FLOOR

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

#: Timing settings per mode, batch ("1" or "many") and process ("main": the onnxcam-vs-floor
#: process that gives the headline; "peer": the PyTorch processes): the budget for the alternated
#: rounds, the bounds on their number, warm-up rounds and the calls of the memory phase (the same
#: number for every contender of a batch size, since the second call can raise the peak).
TIMING = {
    "full": {
        "1": {"main": dict(budget_s=10.0, min_rounds=10, max_rounds=200, warmup=1, mem_calls=2),
              "peer": dict(budget_s=6.0, min_rounds=8, max_rounds=100, warmup=1, mem_calls=2)},
        "many": {"main": dict(budget_s=30.0, min_rounds=8, max_rounds=60, warmup=1, mem_calls=2),
                 "peer": dict(budget_s=8.0, min_rounds=2, max_rounds=30, warmup=1, mem_calls=2)},
    },
    "quick": {
        "1": {"main": dict(budget_s=5.0, min_rounds=8, max_rounds=100, warmup=1, mem_calls=2),
              "peer": dict(budget_s=3.0, min_rounds=5, max_rounds=60, warmup=1, mem_calls=2)},
        "many": {"main": dict(budget_s=5.0, min_rounds=3, max_rounds=20, warmup=1, mem_calls=2),
                 "peer": dict(budget_s=3.0, min_rounds=2, max_rounds=10, warmup=1, mem_calls=2)},
    },
}
PROFILE_RUNS = {"full": 10, "quick": 4}
#: Before a measurement, wait while other processes keep more than this share of the CPUs busy.
IDLE_THRESHOLD = 0.25


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~2 min): ResNet-50, batch 1, fewer rounds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=2, help="threads for every contender (default 2)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated, from {', '.join(MODELS)} (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16; --quick: 1)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated PyTorch contenders, '' for none (default {','.join(PEERS)})")
    parser.add_argument("--no-aa", action="store_true", help="skip the A/A control (a second floor session)")
    parser.add_argument("--no-profile", action="store_true", help="skip the onnxruntime profile")
    parser.add_argument("--reexport", action="store_true", help="ignore the export cache")
    parser.add_argument("--cam-session-config", action="append", default=[], metavar="KEY=VALUE",
                        help="onnxruntime session config entry for the onnxcam sessions only (repeatable), "
                             "e.g. session.disable_prepacking=1")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="after 60%% of this, remaining jobs run their minimum rounds only; after 100%%, "
                             "they are skipped (default 18; --quick 3)")
    parser.add_argument("--idle-wait", type=float, default=None,
                        help="seconds to wait, at most, before a measurement while other processes keep more than "
                             f"{100 * IDLE_THRESHOLD:.0f}%% of the CPUs busy (default 40; --quick 10; total at most 3x "
                             "this); 0 disables")
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds before a job is killed")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    args.mode = mode
    args.models = [m for m in (args.models or ("resnet50" if args.quick else ",".join(DEFAULT_MODELS))).split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    args.batches = [int(b) for b in (args.batches or ("1" if args.quick else "1,16")).split(",") if b]
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; known: {', '.join(PEERS)}")
    try:
        args.cam_config = dict(item.split("=", 1) for item in args.cam_session_config)
    except ValueError:
        parser.error("--cam-session-config takes KEY=VALUE")
    if args.max_minutes is None:
        args.max_minutes = 3.0 if args.quick else 18.0
    if args.idle_wait is None:
        args.idle_wait = 10.0 if args.quick else 40.0
    return args


class Runner:
    """Runs worker jobs in fresh processes with the thread environment pinned."""

    def __init__(self, out: Path, threads: int, timeout: float, idle_wait: float = 0.0) -> None:
        self.jobs_dir = out / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.timeout = timeout
        self.idle_wait = idle_wait
        self.idle_wait_left = 3 * idle_wait
        self.count = 0
        self.env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            self.env[var] = str(threads)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.env["PYTHONWARNINGS"] = "ignore"

    def wait_for_idle(self) -> dict:
        """Wait (bounded) while other processes keep the CPUs busy; returns what was seen."""
        started = time.perf_counter()
        share = measure.busy_share(0.5) if self.idle_wait > 0 else None
        first = share
        limit = min(self.idle_wait, self.idle_wait_left)
        while share is not None and share > IDLE_THRESHOLD and time.perf_counter() - started < limit:
            if first is share:
                log(f"other processes keep {100 * share:.0f}% of the CPUs busy; waiting up to {limit:.0f}s")
            time.sleep(2.0)
            share = measure.busy_share(1.0)
        waited = time.perf_counter() - started
        self.idle_wait_left = max(0.0, self.idle_wait_left - waited)
        return {"busy_share_before": first, "busy_share_at_start": share, "waited_s": waited}

    def __call__(self, spec: dict, *, wait: bool = True) -> dict:
        self.count += 1
        idle = self.wait_for_idle() if wait else {}
        stem = f"{self.count:03d}_{spec['kind']}_{spec.get('model', 'all')}_{spec.get('batch', '')}_{spec.get('which', spec.get('peer', ''))}"
        spec = dict(spec, threads=self.threads, result=str(self.jobs_dir / f"{stem}.result.json"))
        spec_path = self.jobs_dir / f"{stem}.spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        Path(spec["result"]).unlink(missing_ok=True)
        load = measure.CpuLoad()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_path)], cwd=REPO_ROOT,
                              env=self.env, timeout=self.timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0 or not Path(spec["result"]).exists():
            tail = "\n".join((proc.stderr or "").strip().splitlines()[-8:])
            raise RuntimeError(f"job {stem} failed (exit {proc.returncode}):\n{tail}")
        for line in (proc.stderr or "").splitlines():
            if line.startswith("[bench"):
                print(line, file=sys.stderr, flush=True)
        result = json.loads(Path(spec["result"]).read_text())
        result["contention"] = {**load.stop(), **idle}
        return result


def run(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline_soft = started + 0.6 * args.max_minutes * 60
    deadline_hard = started + args.max_minutes * 60
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, args.threads, args.job_timeout, args.idle_wait)
    errors: list[str] = []

    skipped = {}
    peers = []
    for peer in args.peers:
        ok, why = available(peer)
        if ok:
            peers.append(peer)
        else:
            skipped[peer] = why
            log(f"skipping {peer}: {why}")

    log(f"mode {args.mode}: models {args.models}, batches {args.batches}, peers {peers}, {args.threads} threads")
    export = runner({"kind": "export", "models": args.models, "cache_dir": str(out / "cache"),
                     "reexport": args.reexport}, wait=False)["models"]

    profile = {}
    if not args.no_profile:
        try:
            profile = runner({"kind": "profile", "runs": PROFILE_RUNS[args.mode], "profile_dir": str(out / "profiles"),
                              "models": {m: {"plain_path": export[m]["plain_path"], "cam_path": export[m]["cam_path"],
                                             "original_outputs": export[m]["original_outputs"],
                                             "size": MODELS[m].input_size} for m in args.models}})["models"]
        except Exception as exc:  # noqa: BLE001 - report and carry on
            errors.append(f"profile: {exc}")
            log(f"profile failed: {exc}")

    # Phase A, every (model, batch): the onnxruntime processes (headline, memory); phase B: the
    # PyTorch peers, cheapest (model, batch) first. Late jobs run their minimum rounds; past
    # --max-minutes, only phase-B jobs are skipped.
    cases = [(model, batch) for batch in args.batches for model in args.models]
    jobs: dict[tuple[str, int], dict] = {case: {} for case in cases}
    plan = []
    for model, batch in cases:
        timing = TIMING[args.mode]["1" if batch == 1 else "many"]
        base = {"model": model, "batch": batch, "size": MODELS[model].input_size,
                "plain_path": export[model]["plain_path"], "cam_path": export[model]["cam_path"],
                "original_outputs": export[model]["original_outputs"], "cam_config": args.cam_config}
        plan += [((model, batch), "mem_floor", dict(base, kind="ort_mem", which=FLOOR, **timing["main"])),
                 ((model, batch), "mem_cam_logits", dict(base, kind="ort_mem", which=CAM_LOGITS, **timing["main"])),
                 ((model, batch), "ort_main", dict(base, kind="ort_main", aa=not args.no_aa, **timing["main"]))]
    for model, batch in sorted(cases, key=lambda c: c[1] * MODELS[c[0]].gflops):
        timing = TIMING[args.mode]["1" if batch == 1 else "many"]
        base = {"model": model, "batch": batch, "size": MODELS[model].input_size,
                "plain_path": export[model]["plain_path"], "original_outputs": export[model]["original_outputs"]}
        plan += [((model, batch), peer, dict(base, kind="peer", peer=peer, **timing["peer"])) for peer in peers]
    for (model, batch), key, spec in plan:
        now = time.perf_counter()
        if now > deadline_hard and spec["kind"] == "peer":
            errors.append(f"{model} batch {batch} {key}: skipped, past --max-minutes {args.max_minutes:g}")
            log(f"skipping {model} batch {batch} {key}: past --max-minutes")
            continue
        late = now > deadline_soft
        if late:
            spec = dict(spec, budget_s=0.0)  # behind schedule: minimum rounds only
        log(f"{MODELS[model].label} batch {batch}: {key}" + (" (behind schedule: minimum rounds)" if late else ""))
        try:
            result = jobs[(model, batch)][key] = runner(spec, wait=not late)
        except Exception as exc:  # noqa: BLE001 - report and carry on
            errors.append(f"{model} batch {batch} {key}: {exc}")
            log(f"FAILED {model} batch {batch} {key}: {exc}")
            continue
        for name, ratio in result.get("ratios", {}).items():
            log(f"  {name}: {result['contenders'][name]['latency_ms_per_image']['median']:.1f} ms/image, "
                f"x floor {ratio['median']:.3f}")
    rows = [r for case in cases for r in report.build_rows(*case, jobs[case])]

    results = {
        "schema": report.SCHEMA,
        "machine": measure.machine_info(args.threads),
        "settings": {"quick": args.quick, "mode": args.mode, "threads": args.threads, "models": args.models,
                     "batches": args.batches, "peers": peers, "timing": TIMING[args.mode],
                     "profile_runs": PROFILE_RUNS[args.mode], "idle_wait_s": args.idle_wait,
                     "idle_threshold": IDLE_THRESHOLD, "max_minutes": args.max_minutes,
                     "cam_session_config": args.cam_config,
                     "image_size": {m: MODELS[m].input_size for m in args.models},
                     "targets": {m: MODELS[m].target for m in args.models}, "aa": not args.no_aa,
                     "command": "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:])},
        "skipped_peers": skipped,
        "export": export,
        "profile": profile,
        "rows": rows,
        "headline": report.headline(rows),
        "targets": report.targets(rows),
        "errors": errors,
        "wall_s": time.perf_counter() - started,
    }
    json_path, md_path = report.write(results, out)
    log(f"done in {results['wall_s'] / 60:.1f} min: {json_path}, {md_path}")
    return results


def main(argv=None) -> int:
    results = run(argv)
    print(report.to_markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
