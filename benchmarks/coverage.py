"""The coverage matrix: every torchvision family × 2–3 target layers, export → onnxruntime → float64 reference.

For each (model, layer):

1. the model is built by ``tests.reference.functional.make_classifier`` (torchvision's default random
   initialisation, BatchNorm statistics randomised, classifier scaled to O(1–10) logits; nothing is
   downloaded) and exported with ``onnxcam.export_torch(model, zeros(1, 3, S, S), layer, raw=True)``;
2. the exported graph runs in onnxruntime (CPU) on ``--images`` random images, with the predicted
   classes and with explicit targets ``[3, -1, 7, 999, ...]`` (one batch of twice the images);
3. the float64 reference ``tests.reference.functional.deeplift_reference`` (captum-free, generic) is
   computed at ``A`` = the graph's own ``onnxcam_activations`` (``ALGORITHM.md`` §4) and compared:

   * ``coef``: max |φ − φ_ref| / (the image's largest |φ_ref|)               ≤ 1e-4
   * ``heat``: max |heatmap − heatmap_ref|                                   ≤ 1e-3
   * ``class``: the explained classes are equal
   * ``compl``: completeness of the *graph*, max |Σφ − Δ| / max(|Δ|, |y_c(A)|, |y_c(0)|), with the
     graph's ``Σφ`` and ``y_c(A)`` and the float64 reference's ``y_c(0)``     ≤ 1e-4
   * ``act``: the graph's ``A`` is the PyTorch module's output (cloned in a hook, before any in-place
     operation downstream), max abs error relative to max |A|               ≤ 1e-3
   (also recorded, not gated: multipliers max abs error relative to max |m_ref|, logits vs PyTorch,
   the reference's own float64 completeness, and the rules the reference applied in the head).

Status per pair: ``pass``; ``fail`` (numbers out of tolerance); ``error`` (the exception message, and the
stage that raised: build / export / run / reference).

Usage (from the repository root)::

    python -m benchmarks.coverage                    # the whole matrix (~10 min on 2 CPU cores)
    python -m benchmarks.coverage --only resnet18 mobilenet_v3_small
    python -m benchmarks.coverage --pairs resnet18:layer3 googlenet:inception4e
    python -m benchmarks.coverage --extra            # + ConvNeXt (expected error), Inception-v3, ...
    python -m benchmarks.coverage --ci               # the fast subset of the tests

Writes ``benchmarks/results/coverage.json`` and ``coverage.md`` (``--out`` to change); one progress
line per pair on stderr.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.measure import write_atomic

#: Tolerances of ALGORITHM.md §4.
TOL_COEF = 1e-4
TOL_HEAT = 1e-3
TOL_COMPLETENESS = 1e-4
#: The graph's ``onnxcam_activations`` against the PyTorch module's output (fp32 vs fp32).
TOL_ACTIVATIONS = 1e-3


@dataclass(frozen=True)
class Family:
    name: str
    size: int  # square input size of the export
    layers: tuple[str, ...]  # target layers: the last feature map first, then earlier block boundaries
    note: str = ""


# Input sizes: 64 px where the model exports there; AlexNet/VGG need 224 (their adaptive average pools
# to 6x6 / 7x7 export only when the feature map divides evenly).
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("alexnet", 224, ("features.12", "features.11", "features.5"),
           "overlapping 3/2 max-pools in the head"),
    Family("vgg11_bn", 224, ("features.28", "features.27", "features.14")),
    Family("vgg16", 224, ("features.29", "features.23", "features.16")),
    Family("resnet18", 64, ("layer4", "layer3", "layer2")),
    Family("resnet50", 64, ("layer4", "layer3", "layer2")),
    Family("resnext50_32x4d", 64, ("layer4", "layer3")),
    Family("wide_resnet50_2", 64, ("layer4", "layer3")),
    Family("densenet121", 64, ("features.norm5", "features.transition3", "features.transition2"),
           "functional ReLU after features.norm5"),
    Family("squeezenet1_1", 64, ("features.12", "features.7", "features.4"),
           "overlapping ceil-mode max-pools"),
    Family("mobilenet_v2", 64, ("features.18", "features.14", "features.7")),
    Family("mobilenet_v3_small", 64, ("features.12", "features.9", "features.4"),
           "Hardswish, SE with Hardsigmoid gates"),
    Family("mobilenet_v3_large", 64, ("features.16", "features.12", "features.6")),
    Family("efficientnet_b0", 64, ("features.8", "features.6", "features.4"), "SiLU, SE with Sigmoid gates"),
    Family("shufflenet_v2_x1_0", 64, ("conv5", "stage4", "stage3"), "channel shuffle, split"),
    Family("mnasnet1_0", 64, ("layers.16", "layers.13", "layers.10")),
    Family("regnet_y_400mf", 64, ("trunk_output.block4", "trunk_output.block3", "trunk_output.block2"),
           "SE with Sigmoid gates"),
    Family("googlenet", 64, ("inception5b", "inception4e", "inception3b"),
           "inception pool branches: 3/1 max-pools (overlapping)"),
]}

#: Extra architectures (``--extra``; not in the default run nor in the tests): ConvNeXt has a
#: LayerNormalization in its classifier, so every cut must fail with a clear export error.
EXTRA_FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("convnext_tiny", 64, ("features.7",), "LayerNorm2d in the classifier: expected export error"),
    Family("inception_v3", 160, ("Mixed_7c", "Mixed_6e"), "aux_logits=False; needs >= 75 px"),
    Family("efficientnet_v2_s", 64, ("features.7", "features.5")),
    Family("regnet_x_400mf", 64, ("trunk_output.block4", "trunk_output.block3")),
]}

#: A fast subset (tests/exporters/test_coverage.py runs it by default, ~20 s on 2 idle cores): residual
#: ReLU head, overlapping ceil-mode max-pools, Hardswish + SE(Hardsigmoid) products, SiLU + SE(Sigmoid)
#: products, GoogLeNet's 3/1 pools with functional in-place ReLUs, RegNetY's SE.
CI_PAIRS: tuple[tuple[str, str], ...] = (
    ("resnet18", "layer3"),
    ("squeezenet1_1", "features.7"),
    ("mobilenet_v3_small", "features.4"),
    ("efficientnet_b0", "features.6"),
    ("googlenet", "inception3b"),
    ("regnet_y_400mf", "trunk_output.block3"),
)


def family(name: str) -> Family:
    return FAMILIES.get(name) or EXTRA_FAMILIES[name]


def all_pairs(extra: bool = False) -> list[tuple[str, str]]:
    fams = list(FAMILIES.values()) + (list(EXTRA_FAMILIES.values()) if extra else [])
    return [(f.name, layer) for f in fams for layer in f.layers]


def explicit_targets(n: int, num_classes: int = 1000) -> np.ndarray:
    base = [3, -1, num_classes - 1, 7]
    return np.array([base[i % len(base)] for i in range(n)], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Graph helpers (plain onnx / onnxruntime)
# ---------------------------------------------------------------------------------------------


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No spin-waiting: torch (the reference) runs on the same cores right after each session run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(sess, x: np.ndarray, target: np.ndarray | None) -> dict[str, np.ndarray]:
    from onnxcam import contract

    if target is None:
        target = -np.ones(len(x), dtype=np.int64)
    image = next(i.name for i in sess.get_inputs() if i.name != contract.INPUT_TARGET)
    names = [o.name for o in sess.get_outputs()]
    feeds = {image: x, contract.INPUT_TARGET: np.asarray(target, dtype=np.int64)}
    return dict(zip(names, sess.run(names, feeds)))


def head_op_types(cam) -> list[str]:
    """Op types of the exported source graph that are not in onnxcam's rule table (diagnostic only)."""
    try:
        from onnxcam.exporters.rules import RULES
    except Exception:  # pragma: no cover
        return []
    return sorted({n.op_type for n in cam.graph.node} - set(RULES))


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def _rows(v, sl):
    return v[sl] if isinstance(v, np.ndarray) and v.ndim >= 1 else v


def compare(out: dict[str, np.ndarray], ref: dict) -> dict:
    """Errors of the graph's outputs against the float64 reference (see the module docstring).

    Completeness is the graph's: its own ``Σφ`` and ``y_c(A)`` against ``y_c(0)`` of the float64
    reference (the head at ``A = 0``; equal to the graph's folded ``F(0)`` up to fp32 rounding).
    """
    from onnxcam import contract

    phi = out[contract.OUTPUT_COEFFICIENTS].astype(np.float64)
    phi_ref = ref["coefficients"]
    # Relative to the image's largest |φ|; an image whose φ are all ~0 uses the batch's scale.
    scale = np.maximum(np.abs(phi_ref).max(axis=1, keepdims=True), 1e-3 * np.abs(phi_ref).max() + 1e-12)
    m_ref = ref["multipliers"]
    classes = out[contract.OUTPUT_CLASS]
    y_c = out[contract.OUTPUT_LOGITS][np.arange(len(classes)), classes].astype(np.float64)
    y0_c = ref["logit_at_zero"]  # per image, at the reference's classes (checked equal above)
    delta = y_c - y0_c
    c_scale = np.maximum.reduce([np.abs(delta), np.abs(y_c), np.abs(y0_c), np.full_like(delta, 1e-6)])
    y_ref_c = ref["logits"][np.arange(len(classes)), ref["classes"]]
    r_scale = np.maximum.reduce([np.abs(y_ref_c), np.abs(ref["logit_at_zero"]),
                                 np.abs(y_ref_c - ref["logit_at_zero"]), np.full_like(y_ref_c, 1e-300)])
    return {
        "coef": float((np.abs(phi - phi_ref) / scale).max()),
        "heat": float(np.abs(out[contract.OUTPUT_HEATMAP].astype(np.float64) - ref["heatmap"]).max()),
        "class_ok": bool(np.array_equal(classes, ref["classes"])),
        "compl": float(np.max(np.abs(phi.sum(axis=1) - delta) / c_scale)),
        "mult": float(np.abs(out[contract.OUTPUT_MULTIPLIERS] - m_ref).max() / max(np.abs(m_ref).max(), 1e-300)),
        "logits": float(np.abs(out[contract.OUTPUT_LOGITS] - ref["logits"]).max()
                        / max(np.abs(ref["logits"]).max(), 1e-300)),
        "ref_compl": float(np.max(np.abs(ref["completeness_error"]) / r_scale)),
    }


def _worst(a: dict, b: dict) -> dict:
    out = {}
    for k in a:
        out[k] = (a[k] and b[k]) if k == "class_ok" else max(a[k], b[k])
    return out


def activation_error(model, layer: str, x: np.ndarray, A_graph: np.ndarray) -> float:
    """max |A_graph − A_torch| / max |A_torch|: is the graph's target tensor the module's output?

    ``A_torch`` is cloned inside a forward hook, i.e. before any in-place operation downstream
    (``ReLU(inplace=True)``, ``F.relu(x, inplace=True)``) can modify it.
    """
    import torch

    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        handle.remove()
    a = seen[0].numpy().astype(np.float64)
    if a.shape != A_graph.shape:
        return float("inf")
    return float(np.abs(A_graph - a).max() / max(np.abs(a).max(), 1e-30))


def verdict(err: dict) -> list[str]:
    bad = []
    if "act" in err and not err["act"] <= TOL_ACTIVATIONS:
        bad.append(f"A is not the layer's output (act {err['act']:.2e} > {TOL_ACTIVATIONS:g})")
    if not err["class_ok"]:
        bad.append("class differs")
    if not err["coef"] <= TOL_COEF:
        bad.append(f"coef {err['coef']:.2e} > {TOL_COEF:g}")
    if not err["heat"] <= TOL_HEAT:
        bad.append(f"heat {err['heat']:.2e} > {TOL_HEAT:g}")
    if not err["compl"] <= TOL_COMPLETENESS:
        bad.append(f"compl {err['compl']:.2e} > {TOL_COMPLETENESS:g}")
    return bad


# ---------------------------------------------------------------------------------------------
# One pair
# ---------------------------------------------------------------------------------------------

_models: dict[str, tuple] = {}


def build(name: str):
    """``(float32 model, float64 reference copy)`` for a family, cached (one family at a time)."""
    if name not in _models:
        _models.clear()
        import gc

        gc.collect()
        from tests.reference.functional import make_classifier, prepare_float64

        size = family(name).size
        model = make_classifier(name, seed=0, calibration_hw=(size, size))
        _models[name] = (model, prepare_float64(model))
    return _models[name]


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 2000 else text[:2000] + " …"


def run_pair(name: str, layer: str, n_images: int = 3, seed: int = 1, max_retries: int = 2) -> dict:
    """Export, run and compare one (model, layer); never raises (errors are recorded).

    If the comparison fails while the reference reports fp32-ambiguous rule decisions
    (``deeplift_reference(...)["ambiguous"]``: a kink or a max-pool argmax decided by less than 1e-6
    relative), the images are redrawn (``seed + 1``, ...) up to ``max_retries`` times; every attempt
    is kept in ``attempts``.
    """
    import torch

    import onnxcam
    from onnxcam import contract
    from tests.reference.functional import deeplift_reference

    size = family(name).size
    rec: dict = {"model": name, "layer": layer, "size": size, "status": None, "times": {}}
    t_all = time.perf_counter()
    stage = "build"
    try:
        t = time.perf_counter()
        model, model64 = build(name)
        rec["times"]["build"] = time.perf_counter() - t

        stage = "export"
        t = time.perf_counter()
        cam = onnxcam.export_torch(model, torch.zeros(1, 3, size, size), model.get_submodule(layer), raw=True)
        rec["times"]["export"] = time.perf_counter() - t
        meta = {p.key: p.value for p in cam.metadata_props}
        rec["target_tensor"] = meta.get(contract.META_TARGET)
        rec["target_shape"] = json.loads(meta.get(contract.META_TARGET_SHAPE, "null"))

        stage = "run"
        t = time.perf_counter()
        sess = _session(cam)
        rec["times"]["onnxruntime"] = time.perf_counter() - t
        rec["times"]["reference"] = 0.0
        rec["attempts"] = []
        for attempt, image_seed in enumerate(range(seed, seed + 1 + max_retries)):
            stage = "run"
            t = time.perf_counter()
            x = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(image_seed)).numpy()
            # One batch of 2N: the images with their predicted classes, then again with explicit targets.
            targets = np.concatenate([-np.ones(n_images, np.int64), explicit_targets(n_images)])
            out = _run(sess, np.concatenate([x, x]), targets)
            rec["times"]["onnxruntime"] += time.perf_counter() - t
            act_err = activation_error(model, layer, x, out[contract.OUTPUT_ACTIVATIONS][:n_images])

            stage = "reference"
            t = time.perf_counter()
            ref = deeplift_reference(model64, layer, out[contract.OUTPUT_ACTIVATIONS], targets, (size, size),
                                     check_separation=attempt == 0)
            rec["times"]["reference"] += time.perf_counter() - t
            rec["rules"] = ref["rules"]
            halves = {"predicted": slice(0, n_images), "explicit": slice(n_images, 2 * n_images)}
            errors = {kind: compare({k: v[sl] for k, v in out.items()}, {k: _rows(v, sl) for k, v in ref.items()})
                      for kind, sl in halves.items()}
            worst = _worst(errors["predicted"], errors["explicit"])
            worst["act"] = act_err
            bad = verdict(worst)
            rec["attempts"].append({"seed": image_seed, "ambiguous": ref["ambiguous"], "failure": "; ".join(bad),
                                    "coef": worst["coef"], "heat": worst["heat"], "compl": worst["compl"]})
            rec["errors"], rec["errors_by_target"], rec["ambiguous"] = worst, errors, ref["ambiguous"]
            rec["status"] = "fail" if bad else "pass"
            if bad:
                rec["failure"] = "; ".join(bad)
            else:
                rec.pop("failure", None)
            # Retry with other images only where the float64 ground truth is itself ill-defined at
            # fp32 resolution (a rule decision within 1e-6 of flipping) and the gated errors are
            # the multiplier-sensitive ones (not completeness, class or A, which ambiguity cannot explain).
            retry = bad and ref["ambiguous"] and not (worst["compl"] > TOL_COMPLETENESS or not worst["class_ok"]
                                                      or worst["act"] > TOL_ACTIVATIONS)
            if not retry:
                break
        del sess
    except Exception as exc:  # noqa: BLE001 - recorded, never raised
        rec["status"] = "error"
        rec["stage"] = stage
        rec["error"] = _message(exc)
        rec["traceback"] = traceback.format_exc(limit=6)
    rec["times"]["total"] = time.perf_counter() - t_all
    return rec


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1e}"


def markdown(results: list[dict], meta: dict) -> str:
    counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "error")}
    slowest = max(results, key=lambda r: r["times"]["total"]) if results else None
    lines = [
        "# onnxcam coverage matrix",
        "",
        f"{meta['date']} · onnxcam {meta['onnxcam']} · commit {meta['commit']} · torch {meta['torch']} · "
        f"onnxruntime {meta['onnxruntime']} · {meta['machine']}",
        "",
        f"**{counts['pass']} pass, {counts['fail']} fail, {counts['error']} error** of {len(results)} "
        f"(model, layer) pairs; total {meta['total_s']:.0f} s"
        + (f"; slowest: {slowest['model']} {slowest['layer']} ({slowest['times']['total']:.1f} s)" if slowest else ""),
        "",
        f"Gates (worst over predicted and explicit targets, {meta['images']} random images): coefficients "
        f"≤ {TOL_COEF:g} relative to the image's largest |φ|, heatmap ≤ {TOL_HEAT:g} absolute, same class, "
        f"graph completeness ≤ {TOL_COMPLETENESS:g}. Reference: float64, captum-free "
        "(`tests/reference/functional.py`), at the graph's own `A`.",
        "",
        "| model | layer | px | A shape | status | coef | heat | compl | act | mult | ref compl | time s | rules in head / error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e = r.get("errors") or {}
        shape = "×".join(str(s) for s in r["target_shape"]) if r.get("target_shape") else "—"
        if r["status"] == "error":
            detail = f"**{r['stage']}**: {r['error']}".replace("|", "\\|").replace("\n", " ")
            if len(detail) > 400:
                detail = detail[:400] + " …"
        else:
            detail = ", ".join(f"{k}×{v}" for k, v in sorted((r.get("rules") or {}).items())) or "linear"
            if r["status"] == "fail":
                detail = f"**{r['failure']}**; " + detail
            tries = r.get("attempts") or []
            if len(tries) > 1:
                failed = ", ".join(f"seed {a['seed']}: {a['failure']} (fp32-ambiguous: "
                                   + ", ".join(f"{k}×{v}" for k, v in sorted(a["ambiguous"].items())) + ")"
                                   for a in tries if a["failure"])
                detail += f"; images redrawn ({failed})"
        mark = " (slowest)" if r is slowest else ""
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['size']} | {shape} | {r['status']} | {_fmt(e.get('coef'))} | "
            f"{_fmt(e.get('heat'))} | {_fmt(e.get('compl'))} | {_fmt(e.get('act'))} | {_fmt(e.get('mult'))} | {_fmt(e.get('ref_compl'))} | "
            f"{r['times']['total']:.1f}{mark} | {detail} |"
        )
    errors = [r for r in results if r["status"] == "error"]
    if errors:
        lines += ["", "## Errors", ""]
        for r in errors:
            lines.append(f"- **{r['model']} {r['layer']}** ({r['stage']}): `{r['error']}`")
    lines += ["", "Images are redrawn (up to twice) only when a comparison fails and the float64 reference "
              "reports rule decisions within 1e-6 of flipping (a ReLU input on its kink, a max-pool argmax "
              "decided by < 1e-6): there the ground truth is not defined at fp32 resolution.", "",
              "Columns: coef/heat/compl/act as gated (act: the graph's A vs the PyTorch module's output); mult = max |m − m_ref| / max |m_ref| (not gated); "
              "ref compl = the float64 reference's own completeness; time = build (cached per family) + export "
              "+ onnxruntime + reference.", ""]
    return "\n".join(lines)


def _meta(images: int, total: float) -> dict:
    import subprocess

    import onnxruntime
    import torch

    import onnxcam

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:  # pragma: no cover
        commit = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "onnxcam": onnxcam.__version__,
        "commit": commit,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU",
        "images": images,
        "total_s": total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="families to run (default: all)")
    parser.add_argument("--pairs", nargs="*", help="explicit model:layer pairs")
    parser.add_argument("--ci", action="store_true", help="only the CI subset")
    parser.add_argument("--extra", action="store_true", help="also the EXTRA_FAMILIES (ConvNeXt, Inception-v3, ...)")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    if args.pairs:
        pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    elif args.ci:
        pairs = list(CI_PAIRS)
    else:
        pairs = [p for p in all_pairs(args.extra or bool(args.only)) if not args.only or p[0] in args.only]
    unknown = [m for m, _ in pairs if m not in FAMILIES and m not in EXTRA_FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {sorted(FAMILIES) + sorted(EXTRA_FAMILIES)}")
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = []
    t0 = time.perf_counter()
    for i, (name, layer) in enumerate(pairs, 1):
        rec = run_pair(name, layer, n_images=args.images)
        results.append(rec)
        e = rec.get("errors") or {}
        summary = (f"coef {_fmt(e.get('coef'))} heat {_fmt(e.get('heat'))} compl {_fmt(e.get('compl'))}"
                   if e else rec.get("error", "")[:200])
        print(f"[{i}/{len(pairs)}] {name} {layer}: {rec['status']} ({rec['times']['total']:.1f} s) {summary}",
              file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    meta = _meta(args.images, total)
    args.out.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in r.items() if k != "traceback" or r["status"] == "error"} for r in results]
    write_atomic(args.out / "coverage.json", json.dumps({"meta": meta, "results": slim}, indent=1) + "\n")
    write_atomic(args.out / "coverage.md", markdown(results, meta))
    counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "error")}
    print(f"{counts} in {total:.0f} s -> {args.out / 'coverage.md'}", file=sys.stderr)
    return 0 if counts["pass"] == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
