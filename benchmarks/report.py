"""Assemble the measured jobs into result rows, check the issue-4 targets, validate, write JSON and markdown."""
from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.measure import write_atomic
from benchmarks.models import MODELS
from benchmarks.peers import PEERS, TORCH_FORWARD, TORCH_FORWARD_LABEL
from benchmarks.worker import CAM_ALL, CAM_LOGITS, FLOOR, FLOOR_AA

SCHEMA = "onnxcam-bench-speed/1"

_SAME_PROCESS = "alternated call by call with the floor session in one process ({where})"
#: contender → (label, how its ratio to the floor is obtained, where its peak memory comes from)
CONTENDERS: dict[str, tuple[str, str, str]] = {
    FLOOR: ("onnxruntime, original model (floor)", "1 by definition; latency from the onnxcam process",
            "own process, floor session alone"),
    CAM_ALL: ("onnxcam graph, all outputs", _SAME_PROCESS.format(where="the onnxcam process"),
              "onnxcam process, before the floor session exists"),
    CAM_LOGITS: ("onnxcam graph, original logits only", _SAME_PROCESS.format(where="the onnxcam process"),
                 "own process, fetching only the logits"),
    "captum_liftcam": (PEERS["captum_liftcam"][0], _SAME_PROCESS.format(where="the captum process"),
                       "own process, before the floor session exists"),
    "torchcam": (PEERS["torchcam"][0], _SAME_PROCESS.format(where="the torchcam process"),
                 "own process, before the floor session exists"),
    "pytorch_grad_cam": (PEERS["pytorch_grad_cam"][0], _SAME_PROCESS.format(where="the pytorch-grad-cam process"),
                         "own process, before the floor session exists"),
    TORCH_FORWARD: (TORCH_FORWARD_LABEL, _SAME_PROCESS.format(where="the captum process"), "not measured"),
    FLOOR_AA: ("A/A control: a second floor session", _SAME_PROCESS.format(where="the onnxcam process"),
               "not measured"),
}
ORDER = [FLOOR, CAM_ALL, CAM_LOGITS, "captum_liftcam", "torchcam", "pytorch_grad_cam", TORCH_FORWARD, FLOOR_AA]

#: Issue 4's targets on the headline ratio (onnxcam graph, all outputs / floor).
RATIO_LIMITS = {("resnet50", 1): 1.05, ("resnet50", 16): 1.05, ("mobilenet_v2", 1): 1.05,
                ("mobilenet_v2", 16): 1.05, ("vgg16", 1): 1.30, ("vgg16", 16): 1.10}
MEMORY_LIMIT = 1.25
#: A measurement during which other processes used more than this share of the CPUs is flagged.
BUSY_SHARE = 0.10

ROW_KEYS = {"model": str, "batch": int, "contender": str, "label": str, "latency_ms_per_image": dict,
            "throughput_images_per_s": float, "peak_mib": (float, type(None)), "ratio_to_floor": (dict, type(None)),
            "ratio_method": str, "memory_method": str, "n": int}
TOP_KEYS = {"schema": str, "machine": dict, "settings": dict, "skipped_peers": dict, "export": dict,
            "profile": dict, "rows": list, "headline": list, "targets": list, "errors": list}


def build_rows(model: str, batch: int, jobs: dict) -> list[dict]:
    """Rows for one (model, batch) from the job results: ``jobs`` maps ``"ort_main"``,
    ``"mem_floor"``, ``"mem_cam_logits"`` and peer names to :func:`benchmarks.worker.run_job` results."""
    rows = []
    main = jobs.get("ort_main")

    def row(contender, summary, *, ratio=None, memory=None, create=None, process=""):
        contention = (jobs.get(process) or {}).get("contention")
        memory = memory or {}
        peak = memory.get("peak_mib")
        label, ratio_method, memory_method = CONTENDERS[contender]
        rows.append({
            "model": model, "batch": batch, "contender": contender, "label": label,
            "latency_ms_per_image": summary["latency_ms_per_image"],
            "throughput_images_per_s": float(summary["throughput_images_per_s"]),
            "peak_mib": None if peak is None else float(peak),
            "memory_mib": {k: memory.get(k) for k in ("setup_mib", "setup_peak_mib", "run_peak_mib")} if memory else None,
            "session_create_s": create,
            "ratio_to_floor": ratio, "ratio_method": ratio_method, "memory_method": memory_method,
            "n": int(summary["n"]), "process": process, "contention": contention,
        })

    if main:
        c = main["contenders"]
        mem_floor, mem_logits = jobs.get("mem_floor") or {}, jobs.get("mem_cam_logits") or {}
        unit = {"median": 1.0, "p10": 1.0, "p90": 1.0, "ratio_of_medians": 1.0, "rounds": c[FLOOR]["n"]}
        row(FLOOR, c[FLOOR], ratio=unit, memory=mem_floor, create=mem_floor.get("session_create_s"),
            process="ort_main")
        row(CAM_ALL, c[CAM_ALL], ratio=main["ratios"][CAM_ALL], memory=c[CAM_ALL],
            create=c[CAM_ALL].get("session_create_s"), process="ort_main")
        row(CAM_LOGITS, c[CAM_LOGITS], ratio=main["ratios"][CAM_LOGITS], memory=mem_logits,
            create=mem_logits.get("session_create_s"), process="ort_main")
        if FLOOR_AA in c:
            row(FLOOR_AA, c[FLOOR_AA], ratio=main["ratios"][FLOOR_AA], process="ort_main")
    for peer in PEERS:
        result = jobs.get(peer)
        if not result:
            continue
        c = result["contenders"]
        row(peer, c[peer], ratio=result["ratios"][peer], memory=c[peer], process=peer)
        if TORCH_FORWARD in c:
            row(TORCH_FORWARD, c[TORCH_FORWARD], ratio=result["ratios"][TORCH_FORWARD], process=peer)
    rows.sort(key=lambda r: ORDER.index(r["contender"]))
    return rows


def headline(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda k: (_model_index(k[0]), k[1]))
    for model, batch in keys:
        by = {r["contender"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        if CAM_ALL not in by:
            continue
        out.append({
            "model": model, "batch": batch,
            "onnxcam_all_over_floor": by[CAM_ALL]["ratio_to_floor"],
            "onnxcam_logits_only_over_floor": by[CAM_LOGITS]["ratio_to_floor"] if CAM_LOGITS in by else None,
            "aa_floor_over_floor": by[FLOOR_AA]["ratio_to_floor"] if FLOOR_AA in by else None,
            "other_cpu_share": (by[CAM_ALL].get("contention") or {}).get("other_cpu_share"),
            "steal_share": (by[CAM_ALL].get("contention") or {}).get("steal_share"),
        })
    return out


def targets(rows: list[dict]) -> list[dict]:
    """Issue 4's targets, evaluated where measured (``met`` is None when a figure is missing)."""
    out = []
    keys = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda k: (_model_index(k[0]), k[1]))
    for model, batch in keys:
        by = {r["contender"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        cam = by.get(CAM_ALL)
        if cam is None:
            continue
        limit = RATIO_LIMITS.get((model, batch))
        if limit is not None:
            value = cam["ratio_to_floor"]["median"]
            out.append({"target": "latency: onnxcam (all outputs) / floor", "model": model, "batch": batch,
                        "value": value, "limit": limit, "met": value <= limit})
        floor = by.get(FLOOR)
        if floor and floor["peak_mib"] and cam["peak_mib"] is not None:
            value = cam["peak_mib"] / floor["peak_mib"]
            out.append({"target": "peak memory: onnxcam session / floor session", "model": model, "batch": batch,
                        "value": value, "limit": MEMORY_LIMIT, "met": value <= MEMORY_LIMIT})
        for peer in PEERS:
            if peer in by:
                value = by[peer]["ratio_to_floor"]["median"] / cam["ratio_to_floor"]["median"]
                out.append({"target": f"slower than onnxcam: {peer} (peer ratio / onnxcam ratio)", "model": model,
                            "batch": batch, "value": value, "limit": 1.0, "met": value > 1.0})
    return out


def validate(results: dict) -> None:
    """Raise ``ValueError`` if ``results`` does not follow the schema (types, not figures)."""
    for key, kind in TOP_KEYS.items():
        if not isinstance(results.get(key), kind):
            raise ValueError(f"results[{key!r}] missing or not {kind}")
    if results["schema"] != SCHEMA:
        raise ValueError(f"schema {results['schema']!r} != {SCHEMA!r}")
    for i, row in enumerate(results["rows"]):
        for key, kind in ROW_KEYS.items():
            if not isinstance(row.get(key), kind):
                raise ValueError(f"rows[{i}][{key!r}] missing or not {kind}: {row.get(key)!r}")
        if row["contender"] not in CONTENDERS:
            raise ValueError(f"rows[{i}]: unknown contender {row['contender']!r}")
        for stat in ("median", "p10", "p90"):
            if not isinstance(row["latency_ms_per_image"].get(stat), float):
                raise ValueError(f"rows[{i}]: latency {stat} missing")
        if row["ratio_to_floor"] is not None:
            for stat in ("median", "p10", "p90", "ratio_of_medians", "rounds"):
                if stat not in row["ratio_to_floor"]:
                    raise ValueError(f"rows[{i}]: ratio {stat} missing")
    for key in ("cpu_model", "threads", "versions", "date"):
        if key not in results["machine"]:
            raise ValueError(f"machine[{key!r}] missing")


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def _model_index(model: str) -> int:
    names = list(MODELS)
    return names.index(model) if model in names else len(names)


def _f(value, digits=1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _pct(share) -> str:
    return "—" if share is None else f"{100 * share:.0f}%"


def _sig(value: float) -> str:
    """Three significant digits, no exponent (latencies from µs to s)."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _spread(stats: dict | None, digits: int | None) -> str:
    if not stats:
        return "—"
    fmt = _sig if digits is None else (lambda v: f"{v:.{digits}f}")
    return f"{fmt(stats['median'])} ({fmt(stats['p10'])}–{fmt(stats['p90'])})"


def to_markdown(results: dict) -> str:
    m = results["machine"]
    v = m["versions"]
    lines = [
        f"Measured {m['date']} on {m['cpu_model']} ({m.get('cpus_available') or m['cpu_count']} CPUs available), "
        f"{m['threads']} threads for every contender; onnxcam {v.get('onnxcam')}, onnxruntime {v.get('onnxruntime')}, "
        f"torch {v.get('torch')}, captum {v.get('captum')}, grad-cam {v.get('grad-cam')}, torchcam {v.get('torchcam')}."
        + (" Quick run (`--quick`)." if results["settings"].get("quick") else ""),
        "",
        "| Model | Batch | Contender | ms / image, median (p10–p90) | images / s | Peak MiB | × floor, median (p10–p90) | other CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    busy_rows = 0
    for r in results["rows"]:
        if r["contender"] == FLOOR_AA:
            continue
        label = MODELS[r["model"]].label if r["model"] in MODELS else r["model"]
        ratio = "1 (floor)" if r["contender"] == FLOOR else _spread(r["ratio_to_floor"], 2)
        share = (r.get("contention") or {}).get("other_cpu_share")
        flag = ""
        if share is not None and share > BUSY_SHARE:
            flag, busy_rows = " †", busy_rows + 1
        lines.append(f"| {label} | {r['batch']} | {r['label']} | {_spread(r['latency_ms_per_image'], None)} | "
                     f"{_sig(r['throughput_images_per_s'])} | {_f(r['peak_mib'], 0)} | {ratio} | {_pct(share)}{flag} |")
    lines += ["", "Ratios: per-round ratio to the floor session timed in the same process, call by call (see "
              "benchmarks/README.md). Peak MiB: peak RSS above the post-import baseline, contender alone in its "
              "process. other CPU: CPU time used by other processes during the contender's measurement process, "
              "as a share of all CPUs."]
    if busy_rows:
        lines.append(f"† Other processes used more than {100 * BUSY_SHARE:.0f}% of the CPUs during that measurement: "
                     "absolute latencies are inflated, and PyTorch (OpenMP threads spin-waiting at barriers) "
                     "suffers much more than onnxruntime from oversubscription, so the PyTorch rows' ratios "
                     "overstate their cost. The onnxruntime ratios stay usable (compare the A/A control).")
    if results["skipped_peers"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({why})" for k, why in results["skipped_peers"].items()) + "."]

    lines += ["", "Headline (per-round ratio, sessions alternated call by call in one process; median (p10–p90), rounds):", "",
              "| Model | Batch | onnxcam all outputs / floor | onnxcam logits only / floor | A/A floor / floor | rounds | CPU used by other processes |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for h in results["headline"]:
        label = MODELS[h["model"]].label if h["model"] in MODELS else h["model"]
        lines.append(f"| {label} | {h['batch']} | {_spread(h['onnxcam_all_over_floor'], 3)} | "
                     f"{_spread(h['onnxcam_logits_only_over_floor'], 3)} | {_spread(h['aa_floor_over_floor'], 3)} | "
                     f"{h['onnxcam_all_over_floor']['rounds']} | {_pct(h.get('other_cpu_share'))} |")

    if results["targets"]:
        lines += ["", "Issue 4 targets:", "", "| Target | Model | Batch | Measured | Limit | Met |", "|---|---|---:|---:|---:|---|"]
        for t in results["targets"]:
            label = MODELS[t["model"]].label if t["model"] in MODELS else t["model"]
            op = ">" if t["limit"] == 1.0 and t["target"].startswith("slower") else "≤"
            lines.append(f"| {t['target']} | {label} | {t['batch']} | {t['value']:.3f} | {op} {t['limit']:.2f} | "
                         f"{'yes' if t['met'] else 'no'} |")

    if results["export"]:
        create = {}
        for r in results["rows"]:
            if r["contender"] in (FLOOR, CAM_ALL) and r.get("session_create_s") is not None:
                create.setdefault((r["model"], r["contender"]), []).append(r["session_create_s"])
        lines += ["", "Export and session creation (seconds; session creation: median over the fresh processes that created it first):", "",
                  "| Model | torch.onnx.export (plain) | onnxcam.export_torch | nodes added | session, floor | session, onnxcam |",
                  "|---|---:|---:|---:|---:|---:|"]
        for model, e in results["export"].items():
            label = MODELS[model].label if model in MODELS else model
            cached = " (cached)" if e.get("cached") else ""
            fc = create.get((model, FLOOR))
            cc = create.get((model, CAM_ALL))
            med = (lambda xs: sorted(xs)[len(xs) // 2] if xs else None)
            lines.append(f"| {label} | {_f(e.get('plain_export_s'), 1)}{cached} | {_f(e.get('onnxcam_export_s'), 1)}{cached} | "
                         f"{e.get('cam_nodes_added', '—')} / {e.get('cam_nodes_total', '—')} | {_f(med(fc), 2)} | {_f(med(cc), 2)} |")

    if results["profile"]:
        lines += ["", profile_markdown(results["profile"])]
    if results["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def profile_markdown(profile: dict, top: int = 5) -> str:
    lines = ["onnxruntime profile, batch 1 (kernel time per run, ms; median run time from the profiler):", "",
             "| Model | floor run | onnxcam run | original nodes: floor → onnxcam graph | layout reorders: floor → onnxcam | onnxcam/ nodes | onnxcam/ nodes run: all outputs / logits only | top onnxcam/ op types | top original op types (onnxcam graph) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for model, p in profile.items():
        if "onnxcam" not in p or "floor" not in p:
            continue
        label = MODELS[model].label if model in MODELS else model
        fl, cam = p["floor"], p["onnxcam"]
        g0, g1 = fl["group_us_per_run"], cam["group_us_per_run"]
        tops = [o for o in cam["ops"] if o["group"] == "onnxcam"][:top]
        orig = [o for o in cam["ops"] if o["group"] == "original"][:3]
        fmt = lambda ops: ", ".join(f"{o['op']} {o['us_per_run'] / 1000:.2f}" for o in ops)
        lo = p.get("onnxcam_logits_only")
        runs = f"{cam['group_nodes_per_run']['onnxcam']:.0f} / " + (f"{lo['group_nodes_per_run']['onnxcam']:.0f}" if lo else "—")
        lines.append(
            f"| {label} | {fl['model_run_us_median'] / 1000:.1f} | {cam['model_run_us_median'] / 1000:.1f} | "
            f"{g0['original'] / 1000:.1f} → {g1['original'] / 1000:.1f} | {g0['ort_layout'] / 1000:.2f} → {g1['ort_layout'] / 1000:.2f} | "
            f"{g1['onnxcam'] / 1000:.2f} | {runs} | {fmt(tops)} | {fmt(orig)} |")
    return "\n".join(lines)


def write(results: dict, out_dir: Path, stem: str = "speed") -> tuple[Path, Path]:
    validate(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_atomic(json_path, json.dumps(results, indent=1, default=float))
    write_atomic(md_path, to_markdown(results))
    return json_path, md_path


def main(argv=None) -> int:
    """Re-render the markdown from a results JSON: ``python -m benchmarks.report OUT/speed.json``."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "speed.json"
    results = json.loads(path.read_text())
    validate(results)
    markdown = to_markdown(results)
    write_atomic(path.with_suffix(".md"), markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
