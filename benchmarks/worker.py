"""One measurement job, run in its own process by :mod:`benchmarks.speed` (``python -m benchmarks.worker SPEC.json``).

A job is a JSON object with ``kind`` and its parameters; the result is written as JSON to
``spec["result"]``. :func:`run_job` is also callable in-process (the harness's own tests do so).

Kinds:

* ``export``: torch → plain ONNX (the floor) and onnxcam-exported ONNX, cached by fingerprint.
* ``ort_mem``: one ORT session alone (``floor`` or ``cam_logits``): peak memory, session-creation
  time and a few standalone calls.
* ``ort_main``: the onnxcam session fetching everything (peak memory first, alone), then the floor
  session (and, with ``aa``, a second floor session) in the same process, all timed call by call
  in alternation together with the onnxcam session fetching only the original outputs.
* ``peer``: a PyTorch contender alone (peak memory), then the floor session in the same process,
  timed in alternation (the captum process also times the plain PyTorch forward).
* ``profile``: onnxruntime's profiler at batch 1 on the floor graph and on the onnxcam graph,
  fetching everything and fetching only the original outputs (which nodes still run?).

ORT-only kinds do not import torch; every kind imports ``onnxcam.runtime`` (onnxruntime, numpy, OpenCV:
the session-config reader) at start-up, before any memory baseline, the same for every contender.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from onnxcam import contract
from onnxcam.runtime.model_metadata import recommended_session_config

from benchmarks import measure
from benchmarks.measure import log

# Contender keys shared with the report.
FLOOR = "ort_floor"
FLOOR_AA = "ort_floor_aa"
CAM_ALL = "onnxcam_all"
CAM_LOGITS = "onnxcam_logits_only"

TARGET_INPUT = contract.INPUT_TARGET
EXPLAIN_INPUT = contract.INPUT_EXPLAIN  # switchable exports only


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def make_input(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32)


_GLOBAL_POOL: int | None = None


def cam_config(spec: dict) -> dict:
    """Session config of the onnxcam sessions: what the exported model recommends (its
    ``onnxcam.session_config`` metadata, as :class:`onnxcam.runtime.Explainer` applies it), then
    ``--cam-session-config`` on top. (The reader is imported with this module, i.e. before any
    memory baseline: importing ``onnxcam.runtime`` loads OpenCV, ~16 MiB, which must not count as
    the session's memory.)"""
    return {**recommended_session_config(spec["cam_path"]), **(spec.get("cam_config") or {})}


def ort_session(path: str, threads: int, profile_prefix: str | None = None, config: dict | None = None):
    """CPU session: ``threads`` intra-op threads, one inter-op thread, sequential execution, default
    graph optimisations (ORT_ENABLE_ALL).

    All sessions of a process share onnxruntime's global thread pools (``intra = threads``,
    ``inter = 1``; ``use_per_session_threads = False``). With one pool per session, the pool of the
    session that just ran keeps spinning while the next session runs, and a session called twice in
    a row finds its own pool hot: alternated sessions would not be on an equal footing.
    ``config``: extra session config entries (``SessionOptions.add_session_config_entry``).
    """
    global _GLOBAL_POOL
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    if _GLOBAL_POOL is None:
        _pybind_state.set_global_thread_pool_sizes(threads, 1)
        _GLOBAL_POOL = threads
    elif _GLOBAL_POOL != threads:
        raise RuntimeError(f"this process's global thread pool has {_GLOBAL_POOL} threads, not {threads}")
    options = ort.SessionOptions()
    options.use_per_session_threads = False  # the global pools above: intra = threads, inter = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, str(value))
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    t0 = time.perf_counter()
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - t0


def timed_calls(call, n: int) -> list[float]:
    """Seconds of ``max(1, n)`` successive calls (the memory phase's calls)."""
    times = []
    for _ in range(max(1, n)):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


class OrtCall:
    """``session.run(outputs, feeds)`` on a fixed input; ``outputs=None`` fetches every graph output.
    ``explain``: the value fed to a switchable export's ``onnxcam_explain`` (default True)."""

    def __init__(self, session, x: np.ndarray, outputs=None, explain: bool = True) -> None:
        self.session = session
        self.outputs = outputs
        names = [i.name for i in session.get_inputs()]
        image = next(n for n in names if n not in (TARGET_INPUT, EXPLAIN_INPUT))
        self.feeds = {image: x}
        if TARGET_INPUT in names:
            self.feeds[TARGET_INPUT] = np.full((x.shape[0],), -1, dtype=np.int64)  # explain the prediction
        if EXPLAIN_INPUT in names:
            self.feeds[EXPLAIN_INPUT] = np.array(explain)

    def __call__(self):
        return self.session.run(self.outputs, self.feeds)


def _timing(spec: dict) -> dict:
    return {k: spec[k] for k in ("warmup", "min_rounds", "max_rounds", "budget_s")}


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (in-process use)
        pass


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------


def exporter_fingerprint(extra: dict) -> str:
    """Hash of the onnxcam sources and the export settings: a changed exporter invalidates the cache."""
    import onnxcam

    root = Path(onnxcam.__file__).resolve().parent
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    sources = [*root.glob("*.py"), *(root / "exporters").rglob("*.py")]  # not the runtime: it does not shape the graph
    for path in sorted(sources):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def job_export(spec: dict) -> dict:
    import warnings

    import torch

    import onnxcam
    from benchmarks.models import MODELS, build_model, target_module

    _set_torch_threads(spec["threads"])
    cache = Path(spec["cache_dir"])
    cache.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in spec["models"]:
        size = MODELS[name].input_size
        settings = {"model": name, "seed": 0, "opset": 17, "size": size, "target": MODELS[name].target,
                    "torch": torch.__version__}
        fingerprint = exporter_fingerprint(settings)
        plain, cam, record_path = cache / f"{name}.onnx", cache / f"{name}.cam.onnx", cache / f"{name}.export.json"
        if not spec.get("reexport") and record_path.exists() and plain.exists() and cam.exists():
            record = json.loads(record_path.read_text())
            if record.get("fingerprint") == fingerprint:
                record["cached"] = True
                results[name] = record
                log(f"export {name}: cached ({cam})")
                continue
        log(f"export {name}: building the model and exporting (plain, then onnxcam)")
        model = build_model(name)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(plain), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        t1 = time.perf_counter()
        proto = onnxcam.export_torch(model, x, target_module(name, model))
        t2 = time.perf_counter()
        onnxcam.save(proto, cam, overwrite=True)
        t3 = time.perf_counter()
        record = {
            "model": name,
            "fingerprint": fingerprint,
            "onnxcam_version": onnxcam.__version__,
            "plain_path": str(plain),
            "cam_path": str(cam),
            "plain_bytes": plain.stat().st_size,
            "cam_bytes": cam.stat().st_size,
            "plain_export_s": t1 - t0,
            "onnxcam_export_s": t2 - t1,
            "onnxcam_save_s": t3 - t2,
            "original_outputs": ["logits"],  # output_names given to torch.onnx.export
            "cam_nodes_added": sum(1 for n in proto.graph.node if n.name.startswith("onnxcam/")),
            "cam_nodes_total": len(proto.graph.node),
            "cached": False,
        }
        record_path.write_text(json.dumps(record, indent=2))
        log(f"export {name}: plain {record['plain_export_s']:.1f}s, onnxcam {record['onnxcam_export_s']:.1f}s")
        results[name] = record
    return {"models": results}


# ----------------------------------------------------------------------------------------------
# ort_mem / ort_main
# ----------------------------------------------------------------------------------------------


def job_ort_mem(spec: dict) -> dict:
    """One session alone in this process: ``which`` = FLOOR or CAM_LOGITS."""
    which = spec["which"]
    path = spec["plain_path"] if which == FLOOR else spec["cam_path"]
    outputs = None if which == FLOOR else spec["original_outputs"]
    x = make_input(spec["batch"], spec["size"])
    mem = measure.PeakMemory()
    mem.start()  # baseline after the imports and the input, the same for every contender
    session, create_s = ort_session(path, spec["threads"], config=None if which == FLOOR else cam_config(spec))
    mem.mark_setup()
    times = timed_calls(OrtCall(session, x, outputs), spec["mem_calls"])
    return {
        "contender": which,
        **mem.result(),
        "session_create_s": create_s,
        "standalone": measure.summarize(times[1:] or times, spec["batch"]),
        "imports_torch": "torch" in sys.modules,
    }


def job_ort_main(spec: dict) -> dict:
    batch, threads = spec["batch"], spec["threads"]
    x = make_input(batch, spec["size"])
    outputs = spec["original_outputs"]
    mem = measure.PeakMemory()
    mem.start()
    cam, cam_create_s = ort_session(spec["cam_path"], threads, config=cam_config(spec))
    mem.mark_setup()
    cam_all = OrtCall(cam, x, None)
    first = timed_calls(cam_all, spec["mem_calls"])
    memory = mem.result()

    floor, floor_create_s = ort_session(spec["plain_path"], threads)
    # Order F, C(all), F', C(logits): the two calls of the onnxcam session are never adjacent in the
    # rotated order when the A/A session is there.
    calls = {FLOOR: OrtCall(floor, x), CAM_ALL: cam_all}
    if spec.get("aa"):
        floor_b, _ = ort_session(spec["plain_path"], threads)
        calls[FLOOR_AA] = OrtCall(floor_b, x)
    calls[CAM_LOGITS] = OrtCall(cam, x, outputs)
    times = measure.alternate(calls, prewarmed={CAM_ALL: first[-1]}, **_timing(spec))
    contenders = {name: measure.summarize(t, batch) for name, t in times.items()}
    contenders[CAM_ALL].update(memory, session_create_s=cam_create_s)
    contenders[FLOOR]["session_create_s_in_process"] = floor_create_s
    ratios = {name: measure.paired_ratio(times[name], times[FLOOR]) for name in times if name != FLOOR}
    return {"contenders": contenders, "ratios": ratios, "times_s": times, "original_outputs": outputs}


# ----------------------------------------------------------------------------------------------
# peer
# ----------------------------------------------------------------------------------------------


def job_peer(spec: dict) -> dict:
    import torch

    from benchmarks.models import build_model
    from benchmarks.peers import TORCH_FORWARD, make_peer

    _set_torch_threads(spec["threads"])
    # import everything the contender needs before the baseline
    peer_name, model_name, batch = spec["peer"], spec["model"], spec["batch"]
    if peer_name == "captum_liftcam":
        import captum.attr  # noqa: F401
    elif peer_name == "pytorch_grad_cam":
        from benchmarks._torchvision import import_torchvision

        import_torchvision()
        import pytorch_grad_cam  # noqa: F401
    elif peer_name == "torchcam":
        import torchcam.methods  # noqa: F401
    import onnxruntime  # noqa: F401

    if model_name != "tiny":
        from benchmarks._torchvision import import_torchvision

        import_torchvision()
    x_np = make_input(batch, spec["size"])
    x = torch.from_numpy(x_np)
    mem = measure.PeakMemory()
    mem.start()
    model = build_model(model_name)
    peer = make_peer(peer_name, model_name, model)
    mem.mark_setup()
    first = timed_calls(lambda: peer(x), spec["mem_calls"])
    memory = mem.result()

    floor, floor_create_s = ort_session(spec["plain_path"], spec["threads"])
    calls = {peer_name: (lambda: peer(x)), FLOOR: OrtCall(floor, x_np)}
    if peer_name == "captum_liftcam" and spec.get("torch_forward", True):
        forward = make_peer(TORCH_FORWARD, model_name, model)
        calls[TORCH_FORWARD] = lambda: forward(x)
    times = measure.alternate(calls, prewarmed={peer_name: first[-1]}, **_timing(spec))
    contenders = {name: measure.summarize(t, batch) for name, t in times.items()}
    contenders[peer_name].update(memory, first_call_s=first[0])
    ratios = {name: measure.paired_ratio(times[name], times[FLOOR]) for name in times if name != FLOOR}
    return {"contenders": contenders, "ratios": ratios, "times_s": times}


# ----------------------------------------------------------------------------------------------
# profile
# ----------------------------------------------------------------------------------------------


_LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def summarize_profile(trace: list, runs_to_skip: int = 1) -> dict:
    """Per node, the kernel time averaged over the profiled runs after the first ``runs_to_skip``.

    Nodes are grouped as ``onnxcam`` (name starts with ``onnxcam/``: added by the exporter; ORT
    keeps the prefix when it renames a fused or NCHWc node after its output), ``ort_layout``
    (``ReorderInput``/``ReorderOutput`` that ORT's NCHWc transformer inserts between blocked and
    plain layouts) or ``original``. Returns per-group totals and per-(group,
    op type) totals in microseconds per run.
    """
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    kept = runs[runs_to_skip:] or runs
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in kept]
    per_op: dict[tuple[str, str], float] = {}
    executed: dict[str, int] = {"onnxcam": 0, "original": 0, "ort_layout": 0}
    per_node: dict[tuple[str, str, str], float] = {}
    totals = {"onnxcam": 0.0, "original": 0.0, "ort_layout": 0.0}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if windows and not any(lo <= e["ts"] <= hi for lo, hi in windows):
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        group = "onnxcam" if node.startswith("onnxcam/") else "ort_layout" if op in _LAYOUT_OPS else "original"
        dur = float(e["dur"])
        totals[group] += dur
        executed[group] += 1
        per_op[(group, op)] = per_op.get((group, op), 0.0) + dur
        per_node[(group, node, op)] = per_node.get((group, node, op), 0.0) + dur
    n = max(len(kept), 1)
    model_run_us = float(np.median([e["dur"] for e in kept])) if kept else float("nan")
    ops = sorted(({"group": g, "op": o, "us_per_run": d / n} for (g, o), d in per_op.items()),
                 key=lambda r: -r["us_per_run"])
    nodes = sorted(({"group": g, "node": nd, "op": o, "us_per_run": d / n} for (g, nd, o), d in per_node.items()),
                   key=lambda r: -r["us_per_run"])
    return {
        "runs": len(kept),
        "model_run_us_median": model_run_us,
        "group_us_per_run": {g: d / n for g, d in totals.items()},
        "group_nodes_per_run": {g: c / n for g, c in executed.items()},
        "ops": ops,
        "top_nodes": nodes[:15],
    }


def job_profile(spec: dict) -> dict:
    out_dir = Path(spec["profile_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, paths in spec["models"].items():
        x = make_input(1, paths["size"])
        results[name] = {}
        variants = (("floor", paths["plain_path"], None), ("onnxcam", paths["cam_path"], None),
                    ("onnxcam_logits_only", paths["cam_path"], paths["original_outputs"]))
        calls = {}
        for label, path, outputs in variants:  # one profiled session each, runs alternated
            prefix = str(out_dir / f"{name}_{label}")
            for old in glob.glob(prefix + "*.json"):
                os.unlink(old)
            session, _ = ort_session(path, spec["threads"], profile_prefix=prefix)
            calls[label] = OrtCall(session, x, outputs)
        for _ in range(spec["runs"] + 1):
            for call in calls.values():
                call()
        for label, call in calls.items():
            trace_path = call.session.end_profiling()
            with open(trace_path) as handle:
                trace = json.load(handle)
            summary = summarize_profile(trace, runs_to_skip=1)
            summary["trace"] = os.path.relpath(trace_path, out_dir.parent)
            results[name][label] = summary
            log(f"profile {name} {label}: {summary['model_run_us_median'] / 1000:.1f} ms/run, "
                f"{summary['group_nodes_per_run']['onnxcam']:.0f} onnxcam/ nodes run, "
                f"{summary['group_us_per_run']['onnxcam'] / 1000:.2f} ms")
    return {"models": results}


JOBS = {"export": job_export, "ort_mem": job_ort_mem, "ort_main": job_ort_main, "peer": job_peer, "profile": job_profile}


def run_job(spec: dict) -> dict:
    started = time.perf_counter()
    result = JOBS[spec["kind"]](spec)
    result["job_wall_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    result = run_job(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
