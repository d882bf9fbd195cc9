"""Faithfulness benchmark: every CAM method of onnxcam, Score-CAM and two sanity floors on real models.

``python -m benchmarks.quality`` (options: ``--help``) explains real photos with every method, scores
the maps with :mod:`onnxcam.metrics` on the **plain** model (:class:`onnxcam.runtime.Scorer`, softmax
probabilities) and writes ``quality.json`` and ``quality.md`` to ``benchmarks/results/quality/``
(git-ignored), atomically, after each model (an interrupted run keeps the models already done).

Models (``--models``):

* ``mobilenetv2``: ``mobilenetv2_imagenet_fp32.onnx``, preset "imagenet", the auto target layer
  (features[18], 1280×7×7), photos of ``images/imagenet-sample``; the **labelled** class of
  ``labels.csv`` is explained. Default 20 of its 100 photos, evenly spaced through ``labels.csv``
  (rows ``round(i · 99 / 19)``), because Score-CAM costs one forward pass per non-constant channel
  (~1245 per image here) and the whole run must fit in 25 minutes on 2 CPU cores; ``--images 100``
  evaluates all of them (about 45 s per image on 2 cores).
* ``resnet20`` / ``resnet56``: ``cifar10_resnet20/56.onnx``, preset "cifar10", every photo of
  ``images/photos``; the **predicted** class is explained.

Methods (``--methods``): liftcam, gradcam, gradcam++, xgradcam, hirescam, layercam (each exported by
``onnxcam.export(..., method=m)`` in memory and run by :class:`onnxcam.runtime.Explainer` on CPU);
scorecam (:func:`onnxcam.runtime.score_cam.score_cam` on the activations of a ``raw=True`` export,
every channel, scored by the same plain-model Scorer); random (uniform noise per pixel) and centre (a
Gaussian bump at the image centre, sigma = a quarter of the shorter side): sanity floors that need no
model.

Metrics (:mod:`onnxcam.metrics`), each as a mean with a 95 % percentile-bootstrap interval over the
images: Average Drop % and Increase in Confidence % (explanation image ``H ⊙ x``, i.e. baseline 0 in
model-input space = the dataset's mean colour), deletion AUC (pixels replaced by 0, the mean colour)
and insertion AUC (from RISE's 11×11 sigma-5 blur), ``--steps`` points per curve (default 50).

Time per image: wall-clock time of the explanation alone, after one untimed warm-up run, divided by
the number of images: for the exported methods the ``session.run`` of the explaining graph on batches
of ``--batch-size`` (forward + reverse sweep + heatmap); for Score-CAM the run of the raw export that
yields the activations plus :func:`score_cam` (all its forward passes). Exporting, session creation
and preprocessing are not timed. The machine is shared: timings include whatever else runs on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import measure  # noqa: E402
from benchmarks.quality_report import SCHEMA, to_markdown  # noqa: E402

CAM_METHODS = ("liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
SCORE_CAM = "scorecam"
FLOORS = ("random", "centre")
METHODS = (*CAM_METHODS, SCORE_CAM, *FLOORS)
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "quality"
#: Heatmaps (in [0, 1]) closer than this everywhere are reported as the same maps (``same_maps_as``):
#: with a global-average-pool + linear head, Grad-CAM, XGrad-CAM and HiResCAM give the same map.
SAME_MAPS_ATOL = 1e-4


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: where it and its photos are, and which class is explained."""

    name: str
    file: str
    preset: str
    images: str  # folder under <shared>/images
    explained: str  # "labelled" (labels.csv) or "predicted"
    default_images: int | None  # None: every photo


MODELS = {
    "mobilenetv2": ModelSpec("mobilenetv2", "mobilenetv2_imagenet_fp32.onnx", "imagenet", "imagenet-sample", "labelled", None),
    "resnet20": ModelSpec("resnet20", "cifar10_resnet20.onnx", "cifar10", "photos", "predicted", None),
    "resnet56": ModelSpec("resnet56", "cifar10_resnet56.onnx", "cifar10", "photos", "predicted", None),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def log(message: str) -> None:
    measure.log(f"quality: {message}")


def shared_dir(explicit: str | None) -> Path:
    """``--shared``, else ``ONNXCAM_SHARED``, else ``shared/`` beside the repository (as the tests)."""
    return Path(explicit or os.environ.get("ONNXCAM_SHARED", REPO_ROOT.parent / "shared")).resolve()


# ------------------------------------------------------------------------------------------ inputs
def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` indices spread over ``range(total)``, first and last included: ``round(i·(total−1)/(count−1))``."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({int(round(i * (total - 1) / (count - 1))) for i in range(count)})


def select_images(spec: ModelSpec, shared: Path, requested: int | None) -> tuple[list[Path], list[int] | None]:
    """The photos of a model (and their labels for "labelled" models), ``requested`` of them or the default."""
    folder = shared / "images" / spec.images
    if spec.explained == "labelled":
        with open(folder / "labels.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        files = [folder / row["file"] for row in rows]
        labels: list[int] | None = [int(row["class_index"]) for row in rows]
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        labels = None
    count = requested if requested is not None else (spec.default_images or len(files))
    keep = evenly_spaced(count, len(files))
    return [files[i] for i in keep], (None if labels is None else [labels[i] for i in keep])


def random_maps(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Uniform noise per pixel, ``[n, H, W]``: a map that knows nothing."""
    return np.random.default_rng(seed).random((n, height, width))


def centre_maps(n: int, height: int, width: int) -> np.ndarray:
    """``exp(−d² / 2σ²)`` around the image centre, σ = min(H, W) / 4: the photographer's prior."""
    y = np.arange(height) - (height - 1) / 2
    x = np.arange(width) - (width - 1) / 2
    sigma = min(height, width) / 4
    bump = np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return np.broadcast_to(bump, (n, height, width)).copy()


# ------------------------------------------------------------------------------------------ explaining
def _chunks(n: int, size: int) -> list[slice]:
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def explain_exported(explainer, x: np.ndarray, classes: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Heatmaps ``[N, H, W]`` of an exported method, and the timed seconds (session runs only)."""
    from onnxcam import contract

    explainer.explain(x[:1], target=classes[:1], outputs=[contract.OUTPUT_HEATMAP])  # warm-up, untimed
    heatmaps, seconds = [], 0.0
    for part in _chunks(len(x), batch_size):
        start = time.perf_counter()
        expl = explainer.explain(x[part], target=classes[part], outputs=[contract.OUTPUT_HEATMAP])
        seconds += time.perf_counter() - start
        if not np.array_equal(expl.classes, classes[part]):
            raise RuntimeError(f"explained classes {expl.classes} differ from the requested {classes[part]}")
        heatmaps.append(expl.heatmaps)
    return np.concatenate(heatmaps), seconds


def explain_score_cam(raw_explainer, scorer, x: np.ndarray, classes: np.ndarray, batch_size: int,
                      label: str) -> tuple[np.ndarray, float, int]:
    """Score-CAM heatmaps, the timed seconds (activations + every forward pass) and the forward passes."""
    from onnxcam import contract
    from onnxcam.runtime.score_cam import score_cam

    raw_explainer.explain(x[:1], target=classes[:1], outputs=[contract.OUTPUT_ACTIVATIONS])  # warm-up
    scorer(x[:1])
    heatmaps, seconds, passes = [], 0.0, 0
    for part in _chunks(len(x), batch_size):
        start = time.perf_counter()
        activations = raw_explainer.explain(x[part], target=classes[part], outputs=[contract.OUTPUT_ACTIVATIONS]).activations
        result = score_cam(scorer, x[part], activations, classes[part], batch_size=scorer.batch_size)
        seconds += time.perf_counter() - start
        heatmaps.append(result.heatmaps)
        passes += result.forward_passes
        log(f"{label}: scorecam {part.stop}/{len(x)} images, {passes} forward passes, {seconds:.0f} s")
    return np.concatenate(heatmaps), seconds, passes


# ------------------------------------------------------------------------------------------ scoring
def summarize(values: np.ndarray, resamples: int, seed: int) -> dict:
    """Mean, 95 % bootstrap interval and the per-image values of one metric."""
    from onnxcam.metrics import bootstrap_ci

    mean, low, high = bootstrap_ci(values, confidence=0.95, resamples=resamples, seed=seed)
    return {"mean": mean, "low": low, "high": high, "per_image": [float(v) for v in values]}


def evaluate(scorer, x: np.ndarray, maps: np.ndarray, classes: np.ndarray, steps: int, batch_size: int,
             resamples: int, seed: int) -> dict:
    """The four metrics of one method's maps."""
    from onnxcam.metrics import average_drop_increase, deletion_insertion

    drop = average_drop_increase(scorer, x, maps, classes, batch_size=batch_size)
    curves = deletion_insertion(scorer, x, maps, classes, steps=steps, batch_size=batch_size)
    return {
        "average_drop": summarize(100.0 * drop.drop, resamples, seed),
        "increase_in_confidence": summarize(100.0 * drop.increase.astype(float), resamples, seed),
        "deletion_auc": summarize(curves.deletion.aucs, resamples, seed),
        "insertion_auc": summarize(curves.insertion.aucs, resamples, seed),
        "mean_curves": {
            "deletion": [float(v) for v in curves.deletion.curves.mean(axis=0)],
            "insertion": [float(v) for v in curves.insertion.curves.mean(axis=0)],
        },
    }


# ------------------------------------------------------------------------------------------ one model
def run_model(spec: ModelSpec, shared: Path, args: argparse.Namespace) -> dict:
    import onnxcam
    from onnxcam.runtime import Explainer, Scorer, load_image

    model_path = shared / "models" / spec.file
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found (set --shared or ONNXCAM_SHARED)")
    files, labels = select_images(spec, shared, args.images)
    label = spec.name
    t_model = time.perf_counter()
    scorer = Scorer(str(model_path), device="cpu", threads=args.threads, batch_size=args.batch_size * 4)

    raw = onnxcam.export(str(model_path), None, method="liftcam", raw=True, preprocessing=spec.preset)
    raw_explainer = Explainer(raw.SerializeToString(), device="cpu", threads=args.threads)
    x, _ = raw_explainer.preprocess([load_image(f) for f in files])
    probabilities = scorer(x)
    predicted = probabilities.argmax(axis=1)
    classes = np.asarray(labels, np.int64) if labels is not None else predicted.astype(np.int64)
    n, _, height, width = x.shape
    log(f"{label}: {n} images {height}x{width}, target {raw_explainer.target_layer} "
        f"{raw_explainer.target_shapes[0]}, explaining the {spec.explained} class")

    result = {
        "model": spec.file,
        "preset": spec.preset,
        "target_layer": raw_explainer.target_layer,
        "target_shape": list(raw_explainer.target_shapes[0] or []),
        "explained": spec.explained,
        "images": [f.name for f in files],
        "classes": classes.tolist(),
        "predicted": predicted.tolist(),
        "top1_agreement": float(np.mean(predicted == classes)),
        "class_probability": [float(p) for p in probabilities[np.arange(n), classes]],
        "methods": {},
    }
    earlier_maps: dict[str, np.ndarray] = {}  # to flag methods whose maps equal an earlier method's
    for method in args.methods:
        t0 = time.perf_counter()
        entry: dict = {}
        if method in CAM_METHODS:
            cam = onnxcam.export(str(model_path), None, method=method, preprocessing=spec.preset)
            explainer = Explainer(cam.SerializeToString(), device="cpu", threads=args.threads)
            maps, seconds = explain_exported(explainer, x, classes, args.batch_size)
            entry["timed"] = "session.run of the explaining graph (forward + reverse sweep + heatmap)"
            del explainer, cam
        elif method == SCORE_CAM:
            maps, seconds, passes = explain_score_cam(raw_explainer, scorer, x, classes, args.batch_size, label)
            entry["timed"] = "raw export run for the activations + score_cam (all forward passes)"
            entry["forward_passes"] = passes
            entry["forward_passes_per_image"] = passes / n
        else:
            maps = random_maps(n, height, width, args.seed) if method == "random" else centre_maps(n, height, width)
            seconds = None
            entry["timed"] = None
        entry["time_per_image_s"] = None if seconds is None else seconds / n
        twin = next((m for m, seen in earlier_maps.items() if np.allclose(seen, maps, rtol=0, atol=SAME_MAPS_ATOL)), None)
        entry["same_maps_as"] = twin
        if method not in FLOORS:
            earlier_maps[method] = maps.astype(np.float32)
        t1 = time.perf_counter()
        if twin is not None:  # the same maps give the same metrics: reuse them (not scored twice)
            entry["metrics"] = result["methods"][twin]["metrics"]
        else:
            entry["metrics"] = evaluate(scorer, x, maps, classes, args.steps, args.batch_size * 4, args.resamples,
                                        args.seed)
        entry["metrics_s"] = time.perf_counter() - t1
        result["methods"][method] = entry
        m = entry["metrics"]
        log(f"{label}: {method:9s} explain {t1 - t0:6.1f} s, metrics {entry['metrics_s']:6.1f} s | "
            f"drop {m['average_drop']['mean']:.1f}% incr {m['increase_in_confidence']['mean']:.0f}% "
            f"del {m['deletion_auc']['mean']:.3f} ins {m['insertion_auc']['mean']:.3f}")
    result["duration_s"] = time.perf_counter() - t_model
    return result


# ------------------------------------------------------------------------------------------ output
def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    json_path, md_path = out / "quality.json", out / "quality.md"
    measure.write_atomic(json_path, json.dumps(results, indent=1, allow_nan=True) + "\n")
    measure.write_atomic(md_path, to_markdown(results))
    return json_path, md_path


# ------------------------------------------------------------------------------------------ command line
def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Faithfulness (Average Drop, Increase in Confidence, deletion/insertion AUC) and time of "
        "every CAM method, Score-CAM and two sanity floors on MobileNetV2 (ImageNet) and CIFAR-10 ResNets.",
    )
    parser.add_argument("--images", type=_positive, default=None,
                        help="images per model, evenly spaced through its photos (default: 20 of the 100 "
                        "ImageNet photos for mobilenetv2, all photos for the CIFAR models)")
    parser.add_argument("--steps", type=_positive, default=50, help="deletion/insertion curve steps (default 50)")
    parser.add_argument("--models", type=lambda t: _names(t, tuple(MODELS), "model"), default=list(MODELS),
                        help=f"comma-separated, from {','.join(MODELS)} (default: all)")
    parser.add_argument("--methods", type=lambda t: _names(t, METHODS, "method"), default=list(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--shared", default=None, help="the shared data folder (default: $ONNXCAM_SHARED or ../shared)")
    parser.add_argument("--batch-size", type=_positive, default=16,
                        help="images per explaining run (default 16); the Scorer and the metrics use 4x")
    parser.add_argument("--threads", type=_positive, default=None, help="onnxruntime intra-op threads (default: its own)")
    parser.add_argument("--resamples", type=_positive, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random map and the bootstrap")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shared = shared_dir(args.shared)
    started = time.perf_counter()
    results = {
        "schema": SCHEMA,
        "command": " ".join(["python -m benchmarks.quality", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "images": args.images, "steps": args.steps, "models": args.models, "methods": args.methods,
            "batch_size": args.batch_size, "threads": args.threads, "resamples": args.resamples, "seed": args.seed,
            "confidence": 0.95, "average_drop_baseline": "0 (model-input space)",
            "deletion_baseline": "zero", "insertion_baseline": "blur (cv2.GaussianBlur 11x11, sigma 5)",
        },
        "machine": measure.machine_info(args.threads or 0),
        "models": {},
        "complete": False,
    }
    for name in args.models:
        results["models"][name] = run_model(MODELS[name], shared, args)
        results["duration_s"] = time.perf_counter() - started
        json_path, md_path = write_results(results, args.out)
        log(f"{name} done in {results['models'][name]['duration_s']:.0f} s; wrote {json_path} and {md_path}")
    results["complete"] = True
    results["duration_s"] = time.perf_counter() - started
    json_path, md_path = write_results(results, args.out)
    log(f"finished in {results['duration_s']:.0f} s: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
