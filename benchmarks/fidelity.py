"""Shapley fidelity: how well LIFT-CAM and the Grad-CAM family rank target-layer channels by their Shapley values.

For a target layer whose head ``F`` is non-linear, the Shapley values of its K channels (players:
channels; ``v(S) = y_c(A ⊙ 1_S)``, channels outside ``S`` at the zero reference; ``c`` the predicted
class, explained on its logit) are the quantity LIFT-CAM approximates in one DeepLIFT pass. Here they
are estimated by permutation sampling (:func:`onnxcam.metrics.shapley.shapley_permutation`, antithetic
pairs) on the exported head (:func:`onnxcam.export_head`) and compared, image by image, with:

* ``liftcam``: LIFT-CAM's coefficients ``φ_k = Σ_ij A_kij m_kij`` (contributions, same units as φ);
* ``gradcam``, ``gradcam++``, ``xgradcam``: their channel weights ``w_k`` (per unit of activation),
  and as a secondary, clearly labelled row ``w_k·Σ_ij A_kij`` ("× ΣA"): the weights turned into
  contributions, which is what a Shapley value is (for a head linear in ``A``, Grad-CAM × ΣA *is*
  LIFT-CAM; XGrad-CAM × ΣA is HiResCAM's channel sum up to XGrad-CAM's 1e-7);
* ``hirescam``, ``layercam``: their ``onnxcam_coefficients``, the channel sums of their maps
  (``Σ_ij G ⊙ A`` and ``Σ_ij ReLU(G) ⊙ A``), already contributions: no second row.

Agreement per image: :func:`onnxcam.metrics.statistics.agreement` (Pearson, Spearman, cosine, top-10%
overlap), aggregated over the images as the mean and a 95% bootstrap interval
(:func:`onnxcam.metrics.statistics.bootstrap_ci`). The Shapley estimate's own precision is reported
per model: permutations, relative standard error ``‖stderr‖/‖φ‖`` and split-half correlation ``r`` (the
estimates from the two halves of the samples), the Pearson noise ceiling ``√(2r/(1+r))`` (what a
method equal to the true Shapley values would score against the estimate, Spearman–Brown), and the
efficiency gap ``|Σφ − (y_c(A) − y_c(0))|``.

Defaults: MobileNetV2 16 images × 48 permutations, ResNet-20 10 × 256, ResNet-56 10 × 160. Measured
on 2 CPU cores shared with other work: a MobileNetV2 permutation (159 head evaluations) costs ~0.18 s
idle and ~0.47 s at load average 5–6, a ResNet-20 one ~0.010–0.013 s, a ResNet-56 one ~0.03–0.045 s;
the whole default run is ~4 min idle and 488 s measured at load 5–6. Precision at these defaults
(measured): relative stderr ≈ 0.11 for MobileNetV2 (K = 160) and ≈ 0.05–0.07 for the
ResNets (K = 32), split-half Pearson ≈ 0.95 and ≈ 0.99, Pearson noise ceilings ≈ 0.99 and ≈ 0.998, far
above the spread between the methods.

Models and cuts (non-linear heads):

=============  ==========================================================  ==================  ========
model          target (its output)                                         images              preset
=============  ==========================================================  ==================  ========
mobilenetv2    ``features[14]`` (160×7×7; head: features 15–18, pool, fc)  imagenet-sample     imagenet
resnet20       ``layer2`` (32×16×16; head: layer3, pool, fc)              photos (10)         cifar10
resnet56       ``layer2`` (32×16×16; head: layer3, pool, fc)              photos (10)         cifar10
=============  ==========================================================  ==================  ========

Usage (from the repository root)::

    python -m benchmarks.fidelity                                  # all three, defaults (< 8 min, 2 cores)
    python -m benchmarks.fidelity --models resnet20 --images 4 --permutations 64
    python -m benchmarks.fidelity --permutations mobilenetv2=48 resnet56=160   # per-model counts
    python -m benchmarks.fidelity --out /tmp/fidelity              # default benchmarks/results/fidelity

Writes ``fidelity.json`` and ``fidelity.md`` atomically; progress on stderr. The real models and photos
come from ``ONNXCAM_SHARED`` (default: ``shared/`` beside the repository).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks.measure import write_atomic

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "fidelity"
METHODS = ("liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
#: Methods whose coefficients are per-unit-activation weights (a "× ΣA" contribution row is added).
CHANNEL_WEIGHTED = ("gradcam", "gradcam++", "xgradcam")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class ModelSpec:
    """One model, its cut and its images; ``permutations`` and ``images`` are the defaults."""

    name: str
    file: str
    target: str
    label: str
    preset: str
    image_dir: str
    images: int
    permutations: int


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mobilenetv2", "mobilenetv2_imagenet_fp32.onnx", "/features/features.14/conv/conv.2/Conv_output_0",
                  "features[14]", "imagenet", "imagenet-sample", images=16, permutations=48),
        ModelSpec("resnet20", "cifar10_resnet20.onnx", "/layer2/layer2.2/Relu_1_output_0",
                  "layer2 (before layer3)", "cifar10", "photos", images=10, permutations=256),
        ModelSpec("resnet56", "cifar10_resnet56.onnx", "/layer2/layer2.8/Relu_1_output_0",
                  "layer2 (before layer3)", "cifar10", "photos", images=10, permutations=160),
    )
}


def log(message: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def shared_dir() -> Path:
    return Path(os.environ.get("ONNXCAM_SHARED", REPO.parent / "shared")).resolve()


# ------------------------------------------------------------------------------------ inputs
def pick_images(spec: ModelSpec, shared: Path, count: int) -> list[Path]:
    """``count`` images of the model's folder: all of them in name order when there are no more,
    else evenly spaced over the sorted names (the ImageNet sample is sorted by class id)."""
    folder = shared / "images" / spec.image_dir
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    if count >= len(files):
        return files
    picks = np.unique(np.linspace(0, len(files) - 1, count).round().astype(int))
    return [files[i] for i in picks]


def class_names(spec: ModelSpec, shared: Path) -> list[str] | None:
    if spec.preset == "cifar10":
        return CIFAR10_CLASSES
    path = shared / "images" / "imagenet_classes.json"
    return json.loads(path.read_text()) if path.is_file() else None


def true_labels(spec: ModelSpec, shared: Path) -> dict[str, int]:
    path = shared / "images" / spec.image_dir / "labels.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["file"]: int(row["class_index"]) for row in csv.DictReader(handle)}


# ------------------------------------------------------------------------------------ one model
def explain_all(spec: ModelSpec, model_path: Path, images: list[Path]) -> dict:
    """Activations, predicted classes and every method's coefficients for ``images``."""
    import onnxcam
    from onnxcam.runtime import Explainer

    raw = Explainer(onnxcam.export(model_path, target=spec.target, raw=True, preprocessing=spec.preset).SerializeToString(), device="cpu")
    expl, _ = raw.explain_images([str(p) for p in images], batch_size=len(images))
    classes = expl.classes.astype(np.int64)
    coefficients = {"liftcam": expl.coefficients.astype(np.float64)}
    for method in METHODS[1:]:
        explainer = Explainer(onnxcam.export(model_path, target=spec.target, method=method, preprocessing=spec.preset).SerializeToString(), device="cpu")
        other, _ = explainer.explain_images([str(p) for p in images], target=classes, batch_size=len(images))
        if not np.array_equal(other.classes, classes):
            raise RuntimeError(f"{spec.name}/{method}: explained classes differ from LIFT-CAM's")
        coefficients[method] = other.coefficients.astype(np.float64)
    return {"activations": expl.activations, "classes": classes, "logits": expl.logits, "coefficients": coefficients}


def compared_weights(coefficients: dict[str, np.ndarray], activations: np.ndarray) -> dict[str, np.ndarray]:
    """Row label → ``[N, K]`` channel scores compared with the Shapley values."""
    channel_sums = activations.astype(np.float64).sum(axis=(2, 3))  # Σ_ij A_kij, [N, K]
    rows: dict[str, np.ndarray] = {}
    for method in METHODS:
        rows[method] = coefficients[method]
        if method in CHANNEL_WEIGHTED:
            rows[f"{method} × ΣA"] = coefficients[method] * channel_sums
    return rows


def run_model(spec: ModelSpec, shared: Path, n_images: int, permutations: int, seed: int, batch_size: int,
              agreement: Callable, bootstrap_ci: Callable) -> dict:
    import onnxcam
    from onnxcam.metrics.shapley import HeadScorer, shapley_permutation

    model_path = shared / "models" / spec.file
    images = pick_images(spec, shared, n_images)
    names = class_names(spec, shared)
    labels = true_labels(spec, shared)
    start = time.perf_counter()
    data = explain_all(spec, model_path, images)
    head = HeadScorer(onnxcam.export_head(model_path, spec.target).SerializeToString(), batch_size=batch_size)
    prepare_s = time.perf_counter() - start
    rows = compared_weights(data["coefficients"], data["activations"])
    log(f"{spec.name}: {len(images)} images, target {spec.target} {list(data['activations'].shape[1:])}, "
        f"{permutations} permutations each; exports and explanations {prepare_s:.1f} s")

    per_image, shapley_s = [], 0.0
    for i, path in enumerate(images):
        c = int(data["classes"][i])
        t0 = time.perf_counter()
        est = shapley_permutation(head, data["activations"][i], c, permutations=permutations, seed=seed + i,
                                  batch_size=batch_size)
        seconds = time.perf_counter() - t0
        shapley_s += seconds
        lift_sum = float(data["coefficients"]["liftcam"][i].sum())
        per_image.append({
            "image": path.name,
            "class": c,
            "class_name": names[c] if names else None,
            "label": labels.get(path.name),
            "shapley": {**est.summary(), "seconds": seconds},
            "liftcam_completeness_gap": abs(lift_sum - (est.value_full - est.value_empty)),
            "agreement": {row: _plain(agreement(est.values, scores[i])) for row, scores in rows.items()},
        })
        log(f"{spec.name} {i + 1}/{len(images)} {path.name}: class {c}, rel. stderr {est.relative_stderr:.3f}, "
            f"split-half r {est.split_half_pearson:.3f}, {seconds:.1f} s")
    summary = {row: _aggregate([img["agreement"][row] for img in per_image], bootstrap_ci, seed) for row in rows}
    shap = [img["shapley"] for img in per_image]
    return {
        "file": spec.file,
        "target": spec.target,
        "target_label": spec.label,
        "target_shape": list(data["activations"].shape[1:]),
        "preset": spec.preset,
        "images": len(images),
        "permutations": permutations,
        "seconds": {"prepare": prepare_s, "shapley": shapley_s},
        "shapley": {
            "evaluations_per_image": shap[0]["evaluations"],
            "relative_stderr": _spread([s["relative_stderr"] for s in shap]),
            "split_half_pearson": _spread([s["split_half_pearson"] for s in shap]),
            "split_half_spearman": _spread([s["split_half_spearman"] for s in shap]),
            "pearson_ceiling": _spread([_ceiling(s["split_half_pearson"]) for s in shap]),
            "efficiency_gap_max": max(s["efficiency_gap"] for s in shap),
            "liftcam_completeness_gap_max": max(img["liftcam_completeness_gap"] for img in per_image),
        },
        "summary": summary,
        "per_image": per_image,
    }


def _plain(values: dict) -> dict:
    """The numeric entries of ``agreement``'s answer as floats (JSON-ready)."""
    return {str(k): float(v) for k, v in values.items() if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def _ceiling(split_half: float) -> float:
    """The Pearson correlation a perfect method can reach against the noisy estimate.

    The split-half correlation ``r`` of two half-sample estimates gives the full estimate's
    reliability ``ρ = 2r / (1 + r)`` (Spearman–Brown); the correlation of the true values with the
    estimate is ``√ρ``.
    """
    if not math.isfinite(split_half) or split_half <= 0:
        return math.nan
    return math.sqrt(2 * split_half / (1 + split_half))


def _spread(values: Sequence[float]) -> dict:
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def _aggregate(per_image: list[dict], bootstrap_ci: Callable, seed: int) -> dict:
    """Metric → mean and 95% bootstrap interval over the images (NaN entries left out, counted)."""
    out = {}
    for metric in per_image[0]:
        values = np.array([img[metric] for img in per_image], np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            out[metric] = {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
            continue
        mean, low, high = bootstrap_ci(finite, confidence=CONFIDENCE, resamples=RESAMPLES, seed=seed)
        out[metric] = {"mean": float(mean), "low": float(low), "high": float(high), "n": int(finite.size)}
    return out


# ------------------------------------------------------------------------------------ report
def to_markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [
        "# Shapley fidelity of channel weights",
        "",
        "Agreement of each method's channel scores with the channels' Shapley values (zero reference, "
        "predicted class's logit), estimated by antithetic permutation sampling on the exported head. "
        f"Per cell: mean over the images and {int(settings['confidence'] * 100)}% bootstrap interval "
        f"({settings['resamples']} resamples). Rows marked **× ΣA** are the per-unit-activation weights "
        "`w_k` of Grad-CAM, Grad-CAM++ and XGrad-CAM multiplied by `Σ_ij A_kij` (contributions, the units of "
        "a Shapley value); HiResCAM's and LayerCAM's scores are already channel sums of their maps "
        "(so XGrad-CAM × ΣA is HiResCAM up to the 1e-7 in XGrad-CAM's denominator).",
        "",
        f"Total {results['seconds']:.0f} s on {results['environment']['cpu_count']} CPU cores{_load_note(results)}; "
        f"seed {settings['seed']}.",
    ]
    for name, model in results["models"].items():
        shap = model["shapley"]
        metrics = list(next(iter(model["summary"].values())))
        lines += [
            "",
            f"## {name}: {model['target_label']} `{model['target']}` {model['target_shape']}",
            "",
            f"{model['images']} images, {model['permutations']} permutations per image "
            f"({shap['evaluations_per_image']} head evaluations); Shapley relative stderr mean "
            f"{shap['relative_stderr']['mean']:.3f} (max {shap['relative_stderr']['max']:.3f}), split-half Pearson "
            f"mean {shap['split_half_pearson']['mean']:.3f} (min {shap['split_half_pearson']['min']:.3f}), "
            f"Spearman mean {shap['split_half_spearman']['mean']:.3f}, so a perfect method's Pearson would read "
            f"about {shap['pearson_ceiling']['mean']:.3f} (noise ceiling); efficiency gap max "
            f"{shap['efficiency_gap_max']:.1e}; {model['seconds']['shapley']:.0f} s sampling.",
            "",
            "| method | scores | " + " | ".join(metrics) + " |",
            "| --- | --- | " + " | ".join("---" for _ in metrics) + " |",
        ]
        for row, stats in model["summary"].items():
            method, _, variant = row.partition(" × ")
            kind = "**× ΣA** (contribution)" if variant else ("coefficients" if method == "liftcam" else
                                                             "map channel sums" if method in ("hirescam", "layercam") else "weights")
            cells = [_cell(stats[m]) for m in metrics]
            lines.append(f"| {method} | {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _load_note(results: dict) -> str:
    load = results["environment"].get("load_average") or {}
    if not load.get("start") or not load.get("end"):
        return ""
    return f" (1-min load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end)"


def _cell(stats: dict) -> str:
    if not math.isfinite(stats["mean"]):
        return "n/a"
    return f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def environment() -> dict:
    import onnxruntime

    from onnxcam import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxcam": __version__, "git": commit, "cpu_count": os.cpu_count(), "platform": platform.platform()}


# ------------------------------------------------------------------------------------ CLI
def _permutations(parser: argparse.ArgumentParser, values: list[str] | None) -> dict[str, int]:
    """``["64"]`` → every model 64; ``["resnet56=256", "mobilenetv2=48"]`` → those models."""
    chosen: dict[str, int] = {}
    for value in values or []:
        name, _, count = value.rpartition("=")
        names = [name] if name else list(MODELS)
        if name and name not in MODELS:
            parser.error(f"--permutations {value}: unknown model {name!r}; models: {', '.join(MODELS)}")
        try:
            number = int(count)
        except ValueError:
            parser.error(f"--permutations {value}: expected an integer (or MODEL=integer)")
        if number < 4:
            parser.error(f"--permutations {value}: at least 4 (two antithetic pairs)")
        chosen.update(dict.fromkeys(names, number))
    return chosen


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on the machine slows the sampling)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to run (default: all)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per model (default: mobilenetv2 16, resnet20/56 all 10 photos)")
    parser.add_argument("--permutations", nargs="+", default=None, metavar="[MODEL=]P",
                        help="permutations per image, for every model (P) or per model (resnet56=256); "
                             "default: mobilenetv2 32, resnet20 256, resnet56 128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=320, help="activations per head session run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.images is not None and args.images < 1:
        parser.error("--images must be >= 1")
    permutations = _permutations(parser, args.permutations)

    from onnxcam.metrics.statistics import agreement, bootstrap_ci

    shared = shared_dir()
    if not (shared / "models").is_dir():
        parser.error(f"shared data not found at {shared} (set ONNXCAM_SHARED)")
    start = time.perf_counter()
    results = {
        "benchmark": "fidelity",
        "settings": {"models": args.models, "images": args.images, "seed": args.seed,
                     "permutations": {n: permutations.get(n, MODELS[n].permutations) for n in args.models},
                     "antithetic": True, "batch_size": args.batch_size, "confidence": CONFIDENCE, "resamples": RESAMPLES},
        "environment": environment(),
        "models": {},
    }
    load_start = _load()
    for name in args.models:
        spec = MODELS[name]
        results["models"][name] = run_model(spec, shared, args.images or spec.images, permutations.get(name, spec.permutations),
                                            args.seed, args.batch_size, agreement, bootstrap_ci)
    results["seconds"] = time.perf_counter() - start
    results["environment"]["load_average"] = {"start": load_start, "end": _load()}
    json_path, md_path = args.out / "fidelity.json", args.out / "fidelity.md"
    write_atomic(json_path, json.dumps(results, indent=1, allow_nan=True) + "\n")
    write_atomic(md_path, to_markdown(results))
    log(f"wrote {json_path} and {md_path} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
