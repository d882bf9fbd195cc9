"""``onnxcam gallery``: one PNG comparing explanation methods on a few images.

Usage::

    onnxcam gallery MODEL.onnx IMAGE... -o grid.png [--methods liftcam,gradcam,...,scorecam]
                    [--layer TENSOR] [--preprocessing PRESET|JSON|FILE.json] [--labels FILE.json]
                    [--target CLASS] [--overwrite] [--batch-size B] [--cell PX] [--alpha A]
                    [--device auto|cpu|cuda]

``MODEL.onnx`` is the plain classifier. For every method of the exporter (liftcam, gradcam, gradcam++,
xgradcam, hirescam, layercam) one graph is exported in memory (``onnxcam.export(MODEL, target=TENSOR,
method=m)``) and run on the images; ``scorecam`` is the runtime Score-CAM
(:func:`onnxcam.runtime.score_cam`): the activations come from a LIFT-CAM export made with
``raw=True`` (the liftcam column's own export when both are asked for), the probabilities from a
:class:`onnxcam.runtime.Scorer` on the plain model (on the export's ``onnxcam_logits`` when the model
ends in a Softmax, whose input is not one of its outputs). Every method explains the same class per
image: the predicted one (the LIFT-CAM export's argmax), or ``--target``.

The grid (:func:`onnxcam.runtime.gallery.render_gallery`): one row per image (the model's input
crop), the photo then one overlay per method in the order given; row captions
``"<class name> (p=<softmax probability>)"`` with names from ``--labels`` or the model's
``onnxcam.class_names`` metadata (``class <index>`` otherwise). The PNG is written atomically (temp
file + ``os.replace``); an existing file is kept unless ``--overwrite``. Progress goes to stderr.
Exit status: 0 on success, 2 for a usage error (unknown method, unreadable image, existing output...):
nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import IO, Any

from onnxcam.cli_explain import UsageError, atomic_write, load_labels, load_preprocessing

PROG = "onnxcam gallery"
#: The methods exported as graphs, then the runtime one.
GRAPH_METHODS = ("liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
METHODS = (*GRAPH_METHODS, "scorecam")
TITLES = {
    "liftcam": "LIFT-CAM",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
}


def add_gallery_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``gallery`` subcommand to ``subparsers``; its defaults include ``func=run_gallery``."""
    p = subparsers.add_parser(
        "gallery",
        help="render one PNG comparing explanation methods on a few images",
        description="Export MODEL once per method (in memory), explain the images and write a grid: one row "
        "per image, the photo then one heatmap overlay per method, captions with the class and its probability.",
    )
    p.add_argument("model", metavar="MODEL.onnx", help="the plain ONNX classifier (not an onnxcam export)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, one row each, in order")
    p.add_argument("-o", "--output", required=True, metavar="GRID.png", help="where to write the PNG")
    p.add_argument("--methods", default=",".join(METHODS), metavar="M1,M2,...",
                   help=f"comma-separated columns, in order (default: all: {','.join(METHODS)})")
    p.add_argument("--layer", default=None, metavar="TENSOR",
                   help="target tensor (default: auto, as `onnxcam export`); `onnxcam layers MODEL` lists them")
    p.add_argument("--preprocessing", default=None, metavar="PRESET|JSON|FILE.json",
                   help="a preset (imagenet, cifar10, mnist), a JSON object, or a JSON file with the preprocessing dict")
    p.add_argument("--labels", default=None, metavar="FILE.json",
                   help="JSON list of the class names (default: the model's onnxcam.class_names metadata)")
    p.add_argument("--target", type=int, default=None, metavar="CLASS",
                   help="class index to explain in every image (default: each image's predicted class)")
    p.add_argument("--overwrite", action="store_true", help="replace GRID.png if it exists")
    p.add_argument("--batch-size", type=int, default=64, metavar="B",
                   help="images per onnxruntime run, also Score-CAM's masked images per run (default 64)")
    p.add_argument("--cell", type=int, default=224, metavar="PX", help="side of each grid cell in pixels (default 224)")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A", help="heatmap weight in the overlays, 0..1 (default 0.5)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when onnxruntime has it, else CPU (default)")
    p.set_defaults(func=run_gallery)
    return p


# ---------------------------------------------------------------------------- helpers
def _note(message: str, stream: IO[str]) -> None:
    print(f"{PROG}: {message}", file=stream, flush=True)


def parse_methods(text: str) -> list[str]:
    """``"liftcam, GradCAM++"`` -> ``["liftcam", "gradcam++"]`` (duplicates dropped); UsageError when unknown."""
    methods: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in METHODS:
            raise UsageError(f"unknown method {raw.strip()!r} in --methods; valid methods: {', '.join(METHODS)}")
        if name not in methods:
            methods.append(name)
    if not methods:
        raise UsageError(f"--methods is empty; valid methods: {', '.join(METHODS)}")
    return methods


def caption(name: str, probability: float) -> str:
    """A row caption: ``"bull mastiff (p=0.83)"``."""
    return f"{name} (p={probability:.2f})"


class _Progress:
    """Score-CAM progress on stderr: a rewritten line on a TTY, else a line every 10%."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.next_step = 0.0

    def __call__(self, done: int, total: int) -> None:
        text = f"{PROG}: scorecam: {done}/{total} images scored"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done >= total else ""))
            self.stream.flush()
        elif done / total >= self.next_step or done >= total:
            print(text, file=self.stream, flush=True)
            self.next_step = (int(10 * done / total) + 1) / 10


# ---------------------------------------------------------------------------- main
def run_gallery(args: argparse.Namespace) -> int:
    """Run ``onnxcam gallery`` with parsed arguments; returns the exit status (0 or 2)."""
    try:
        return _run(args, sys.stderr)
    except UsageError as exc:
        _note(f"error: {exc}", sys.stderr)
        return 2


def _check_args(args: argparse.Namespace) -> list[str]:
    methods = parse_methods(args.methods)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.cell < 16:
        raise UsageError(f"--cell must be at least 16 pixels, got {args.cell}")
    if os.path.lexists(args.output) and not args.overwrite:
        raise UsageError(f"{args.output} exists; pass --overwrite to replace it (nothing was written)")
    if os.path.isdir(args.output):
        raise UsageError(f"-o {args.output!r} is a directory")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise UsageError(f"the directory of -o {args.output!r} does not exist")
    if not os.path.isfile(args.model):
        raise UsageError(f"no such model file: {args.model!r}")
    if args.preprocessing is None:
        raise UsageError("pass --preprocessing (imagenet, cifar10, mnist, a JSON object or a JSON file): "
                         "a plain model does not say how its images are prepared")
    return methods


def _open(model: Any, device: str, stderr: IO[str], noted: set) -> Any:
    """An Explainer on the exported ``model``; its warnings (CPU fallback) are printed once per run."""
    from onnxcam.runtime import Explainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(model.SerializeToString(), device=device)
    for w in caught:
        if str(w.message) not in noted:
            noted.add(str(w.message))
            _note(f"note: {w.message}", stderr)
    return explainer


def _explain(explainer, x, target: Any, batch_size: int, raw: bool):
    """Explain ``x`` ``batch_size`` images per run; ``target``: None, an int or an int array [N]."""
    import numpy as np

    from onnxcam import contract
    from onnxcam.runtime import Explanation

    outputs = [contract.OUTPUT_HEATMAP] + ([contract.OUTPUT_ACTIVATIONS] if raw else [])
    parts = []
    for s in range(0, len(x), batch_size):
        t = target[s : s + batch_size] if isinstance(target, np.ndarray) else target
        parts.append(explainer.explain(x[s : s + batch_size], target=t, outputs=outputs))
    return Explanation.concatenate(parts)


def _scorer(model_path: str, explainer, device: str, batch_size: int, stderr: IO[str]):
    """A Scorer on the plain model's explained logits, else on the export's ``onnxcam_logits``."""
    from onnxcam import contract
    from onnxcam.runtime import Scorer

    plain = Scorer(model_path, device=device, batch_size=batch_size)
    explained = explainer.metadata.get(contract.META_EXPLAINED)
    batch_dim = plain.session.get_inputs()[0].shape[0]
    if explained not in [o.name for o in plain.session.get_outputs()]:
        why = f"the explained logits {explained!r} are not an output of {model_path} (a final Softmax?)"
    elif isinstance(batch_dim, int):
        why = f"{model_path} has a fixed batch of {batch_dim}"
    else:
        return Scorer(plain.session, output=explained, batch_size=batch_size)
    _note(f"note: {why}; Score-CAM scores through the LIFT-CAM export's onnxcam_logits", stderr)
    return Scorer(explainer.session, batch_size=batch_size)


def _run(args: argparse.Namespace, stderr: IO[str]) -> int:
    started = time.perf_counter()
    methods = _check_args(args)
    pre = load_preprocessing(args.preprocessing)

    import cv2

    import onnxcam
    from onnxcam.runtime import load_image, score_cam
    from onnxcam.runtime.gallery import render_gallery

    images = []
    for path in args.images:
        try:
            images.append(load_image(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read image {path!r}: {exc}") from None

    # One export per graph method; scorecam needs a raw LIFT-CAM export (shared with the liftcam column).
    exported = [m for m in methods if m != "scorecam"]
    if "scorecam" in methods and "liftcam" not in exported:
        exported.insert(0, "liftcam")
    exported.sort(key=lambda m: m != "liftcam")  # liftcam first: it decides the explained classes
    explainers = {}
    noted: set = set()
    for i, method in enumerate(exported, start=1):
        _note(f"exporting {method} ({i}/{len(exported)})", stderr)
        try:
            model = onnxcam.export(args.model, args.layer, method=method, raw=method == "liftcam" and "scorecam" in methods,
                                   preprocessing=pre)
        except ValueError as exc:  # ExportError: unknown layer, unsupported model...
            raise UsageError(f"cannot export {args.model} with method {method}: {exc}") from None
        explainers[method] = _open(model, args.device, stderr, noted)

    first = explainers[exported[0]]
    if args.target is not None and not 0 <= args.target < first.num_classes:
        raise UsageError(f"--target {args.target} is out of range [0, {first.num_classes})")
    names = load_labels(args.labels, first.num_classes) if args.labels else first.class_names
    _note(f"target layer: {first.target_layer}; {len(images)} image(s)", stderr)
    x, display = first.preprocess(images)

    heatmaps: dict = {}
    classes = probabilities = activations = None
    for method in exported:
        _note(f"explaining with {method}", stderr)
        raw = method == "liftcam" and "scorecam" in methods
        expl = _explain(explainers[method], x, args.target if classes is None else classes, args.batch_size, raw)
        heatmaps[method] = expl.heatmaps
        if classes is None:
            classes, probabilities = expl.classes, expl.probabilities()
            activations = expl.activations
    if "scorecam" in methods:
        scorer = _scorer(args.model, explainers["liftcam"], args.device, args.batch_size, stderr)
        t = time.perf_counter()
        result = score_cam(scorer, x, activations, classes, batch_size=args.batch_size, progress=_Progress(stderr))
        elapsed = time.perf_counter() - t
        _note(f"scorecam: {result.forward_passes} forward passes in {elapsed:.1f} s "
              f"({elapsed / len(images):.1f} s per image)", stderr)
        heatmaps["scorecam"] = result.heatmaps

    captions = []
    for i, c in enumerate(classes):
        name = names[int(c)] if names else f"class {int(c)}"
        captions.append(caption(name, float(probabilities[i, int(c)])))
    grid = render_gallery(display, [(TITLES[m], heatmaps[m]) for m in methods], captions, cell=args.cell, alpha=args.alpha)
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise RuntimeError("OpenCV could not encode the grid as PNG")
    atomic_write(args.output, png.tobytes())
    _note(f"wrote {args.output} ({grid.shape[1]}x{grid.shape[0]} px, {len(images)} row(s), "
          f"{len(methods)} method(s)) in {time.perf_counter() - started:.1f} s", stderr)
    return 0
