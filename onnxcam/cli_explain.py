"""``onnxcam explain``: heatmaps, overlays and JSON predictions for image files.

Usage::

    onnxcam explain MODEL.cam.onnx IMAGES_OR_DIRS... --out DIR [--class N] [--batch-size B]
                    [--device auto|cpu|cuda] [--overwrite] [--alpha A] [--labels FILE.json]
                    [--preprocessing PRESET|FILE.json] [--threads T]

For each image ``DIR/<name>_heatmap.png``, ``DIR/<name>_overlay.png`` and ``DIR/<name>.json`` are
written, where ``<name>`` is the file's stem (``<stem>_2``, ``<stem>_3``... for later inputs whose stem,
or one of whose output files, is already taken, case-insensitively, in input order). Exit status:
0 when every image was explained, 1 when some image failed (it is reported on stderr and skipped),
2 for usage errors (nothing is written).

Models explaining several target layers also get ``<name>_layer{i}_heatmap.png`` per layer ``i``
(0-based, the model's order); ``<name>_heatmap.png``/``_overlay.png`` then show the fused heatmap
(the first layer's when the model was exported without fusion). Top-k models explain the k best
classes of each image: ``<name>_top{r}_heatmap.png`` and ``<name>_top{r}_overlay.png`` for r = 1..k
(and ``<name>_top{r}_layer{i}_heatmap.png`` with several layers) instead; ``--class`` is refused for
them (they explain the k highest-scoring classes, not a chosen one).

``<name>.json`` holds ``input``, ``top5`` (``index``, ``name``, ``logit``, ``probability``) and the
run's settings (``model``, ``method``, ``target_layer`` (null with several layers),
``target_layers``, ``top_k`` (null unless top-k), ``fused``, ``requested_class``, versions,
providers, ``input_shape``, ``preprocessing``), plus

* one class per image: ``explained_class`` (as a ``top5`` entry), ``heatmap``, ``overlay`` (file
  names) and, with several layers, ``layer_heatmaps`` (``[{"layer": i, "target_layer": name,
  "heatmap": file}]``);
* top-k: ``explained_classes``, one entry per rank: ``{"rank": r (1-based), index, name, logit,
  probability, "heatmap", "overlay"}`` (and ``layer_heatmaps``), best first.

Only the runtime (numpy, OpenCV, onnxruntime) is imported; never onnx or torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import IO, Any, Optional

from onnxcam._files import atomic_write

PROG = "onnxcam explain"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TOP_K = 5
_MAX_CLASHES_SHOWN = 5


class UsageError(Exception):
    """A problem with the command line or its inputs: exit status 2, nothing written."""


def add_explain_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``explain`` subcommand to ``subparsers`` and return its parser.

    The parser's defaults include ``func=run_explain``, so a main program can call
    ``args.func(args)``.
    """
    p = subparsers.add_parser(
        "explain",
        help="write LIFT-CAM heatmaps, overlays and predictions for images",
        description=(
            "Explain images with an onnxcam-exported model: for each image write <name>_heatmap.png "
            "(colourised heatmap), <name>_overlay.png (heatmap over the image the model saw) and "
            "<name>.json (top-5 predictions and what was explained) into --out. Models with several "
            "target layers also get <name>_layer{i}_heatmap.png per layer (the main heatmap is then the "
            "fused one); top-k models get <name>_top{r}_heatmap.png and _overlay.png for r = 1..k instead."
        ),
    )
    p.add_argument("model", metavar="MODEL.cam.onnx", help="a model exported with `onnxcam export`")
    p.add_argument(
        "inputs",
        metavar="IMAGES_OR_DIRS",
        nargs="+",
        help=f"image files, or directories whose images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}; "
        "any case; not recursive) are taken in sorted order",
    )
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument(
        "--class",
        dest="target_class",
        type=int,
        default=None,
        metavar="N",
        help="class index to explain for every image (default: each image's predicted class); "
        "refused for top-k models, which explain their k best classes",
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per session run (default 16)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when onnxruntime has it, else CPU (default); cuda: fail without it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A", help="heatmap weight in the overlay, 0..1 (default 0.5)")
    p.add_argument(
        "--labels",
        metavar="FILE.json",
        default=None,
        help="JSON list of the class names (default: the model's onnxcam.class_names metadata, if any)",
    )
    p.add_argument(
        "--preprocessing",
        metavar="PRESET|FILE.json",
        default=None,
        help="override the model's preprocessing metadata: a preset name (imagenet, cifar10, mnist), "
        "a JSON object or a JSON file with the preprocessing dict",
    )
    p.add_argument("--threads", type=int, default=None, metavar="T", help="onnxruntime intra-op threads")
    p.set_defaults(func=run_explain)
    return p


# ---------------------------------------------------------------------------- helpers
def _err(message: str, stream: Optional[IO[str]] = None) -> None:
    print(f"{PROG}: {message}", file=stream or sys.stderr, flush=True)


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files as given, directories expanded to their image files (sorted); duplicates dropped.

    Raises UsageError for a path that does not exist or a directory without images.
    """
    files: list[str] = []
    seen: set[str] = set()
    for arg in inputs:
        if os.path.isdir(arg):
            found = sorted(
                os.path.join(arg, name)
                for name in os.listdir(arg)
                if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(arg, name))
            )
            if not found:
                raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in directory {arg!r}")
        elif os.path.exists(arg):
            found = [arg]
        else:
            raise UsageError(f"no such file or directory: {arg!r}")
        for path in found:
            key = os.path.normcase(os.path.realpath(path))
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def output_names(paths: Sequence[str], suffixes: Sequence[str] = ("",)) -> list[str]:
    """A distinct output base name per input: its stem, or ``<stem>_<k>`` (k = 2, 3, ...) when taken.

    ``suffixes`` are what the output files append to the base name (e.g. ``".json"``,
    ``"_layer0_heatmap.png"``): a name is taken when one of its files is another input's file, so
    that ``a.png`` and ``a_layer0.png`` never write the same ``a_layer0_heatmap.png``. Comparison is
    case-insensitive (safe on case-insensitive file systems); a suffixed name never takes a file of
    another input's plain stem. Deterministic for a given input order.
    """
    stems = [os.path.splitext(os.path.basename(p))[0] or "image" for p in paths]

    def files(name: str) -> set[str]:
        return {(name + suffix).casefold() for suffix in suffixes}

    natural = set().union(*(files(s) for s in stems))
    taken: set[str] = set()
    names: list[str] = []
    for stem in stems:
        name = stem
        if files(name) & taken:
            k = 2
            while files(f"{stem}_{k}") & (taken | natural):
                k += 1
            name = f"{stem}_{k}"
        taken |= files(name)
        names.append(name)
    return names


def output_files(out_dir: str, name: str) -> tuple[str, str, str]:
    """``(heatmap, overlay, json)`` paths for one output base name (a single-class model)."""
    return (
        os.path.join(out_dir, f"{name}_heatmap.png"),
        os.path.join(out_dir, f"{name}_overlay.png"),
        os.path.join(out_dir, f"{name}.json"),
    )


def image_prefixes(top_k: Optional[int]) -> list[str]:
    """The infix of each explained class's files: ``[""]``, or ``["_top1", ..., "_top{k}"]`` for top-k."""
    return [""] if top_k is None else [f"_top{r}" for r in range(1, top_k + 1)]


def file_suffixes(top_k: Optional[int], num_layers: int) -> list[str]:
    """Everything appended to an output base name, for a model with ``top_k`` and ``num_layers``."""
    suffixes = [".json"]
    for prefix in image_prefixes(top_k):
        suffixes += [f"{prefix}_heatmap.png", f"{prefix}_overlay.png"]
        if num_layers > 1:
            suffixes += [f"{prefix}_layer{i}_heatmap.png" for i in range(num_layers)]
    return suffixes


class Progress:
    """A one-line progress bar on a TTY stream; silent otherwise (the caller prints a summary)."""

    def __init__(self, total: int, stream: IO[str], width: int = 30) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.width = width
        try:
            self.enabled = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.enabled = False
        self._drawn = False

    def _draw(self) -> None:
        filled = int(self.width * self.done / self.total) if self.total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{PROG} [{bar}] {self.done}/{self.total}")
        self.stream.flush()
        self._drawn = True

    def start(self) -> None:
        if self.enabled:
            self._draw()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            self._draw()

    def message(self, text: str) -> None:
        """Print a line without garbling the bar."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        if self.enabled and self._drawn:
            self._draw()
        else:
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def load_labels(path: str, num_classes: int) -> list[str]:
    """The class names of a ``--labels`` JSON list, checked against the model's class count."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read --labels {path!r}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--labels {path!r} is not valid JSON: {exc}") from None
    if not isinstance(labels, list) or not all(isinstance(x, (str, int, float)) for x in labels):
        raise UsageError(f"--labels {path!r} must be a JSON list of class names")
    if len(labels) != num_classes:
        raise UsageError(f"--labels {path!r} has {len(labels)} names but the model has {num_classes} classes")
    return [str(x) for x in labels]


def load_preprocessing(value: str) -> dict:
    """A preset name, a JSON object, or a JSON file, validated."""
    from onnxcam import contract
    from onnxcam.runtime.images import validate_preprocessing

    if value in contract.PREPROCESSING_PRESETS:
        pre: Any = contract.PREPROCESSING_PRESETS[value]
    elif value.lstrip().startswith("{"):
        try:
            pre = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--preprocessing is not valid JSON: {exc}") from None
    elif os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                pre = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read --preprocessing {value!r}: {exc}") from None
    else:
        raise UsageError(
            f"--preprocessing {value!r} is neither a preset ({', '.join(contract.PREPROCESSING_PRESETS)}), "
            "a JSON object nor a JSON file"
        )
    try:
        return validate_preprocessing(pre)
    except ValueError as exc:
        raise UsageError(f"--preprocessing {value!r}: {exc}") from None


def _class_entry(index: int, logits: Any, probs: Any, names: Optional[list[str]]) -> dict:
    return {
        "index": int(index),
        "name": None if names is None else names[index],
        "logit": float(logits[index]),
        "probability": float(probs[index]),
    }


# ---------------------------------------------------------------------------- main
def run_explain(args: argparse.Namespace) -> int:
    """Run ``onnxcam explain`` with parsed arguments; returns the exit status (0, 1 or 2)."""
    stderr = sys.stderr
    try:
        return _run(args, stderr)
    except UsageError as exc:
        _err(f"error: {exc}", stderr)
        return 2


def _run(args: argparse.Namespace, stderr: IO[str]) -> int:
    if args.batch_size is None or args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} exists and is not a directory")
    paths = expand_inputs(args.inputs)

    import cv2
    import onnxruntime

    from onnxcam import contract
    from onnxcam._version import __version__
    from onnxcam.runtime import Explainer, colorize, load_image, overlay
    from onnxcam.runtime.images import color_channels

    if not os.path.isfile(args.model):
        raise UsageError(f"no such model file: {args.model!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            explainer = Explainer(args.model, device=args.device, threads=args.threads)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    for w in caught:
        _err(f"note: {w.message}", stderr)

    pre = load_preprocessing(args.preprocessing) if args.preprocessing else explainer.preprocessing
    if pre is None:
        raise UsageError(
            f"{args.model} has no {contract.META_PREPROCESSING} metadata; pass --preprocessing "
            f"({', '.join(contract.PREPROCESSING_PRESETS)} or a JSON file)"
        )
    channels = explainer.input_shape[0]
    if color_channels(pre) != channels:
        raise UsageError(
            f"preprocessing color {pre['color']!r} gives {color_channels(pre)} channel(s) but the model "
            f"expects {channels}"
        )
    num_classes = explainer.num_classes
    names = load_labels(args.labels, num_classes) if args.labels else explainer.class_names
    top_k = explainer.top_k
    if args.target_class is not None and top_k is not None:
        raise UsageError(
            f"--class is not supported for a top-k model: {args.model} was exported with top_k={top_k} and "
            f"explains the {top_k} highest-scoring classes of every image; export without --top-k to "
            "explain a chosen class"
        )
    if args.target_class is not None and not 0 <= args.target_class < num_classes:
        raise UsageError(f"--class {args.target_class} is out of range [0, {num_classes})")

    num_layers = len(explainer.target_layers)
    suffixes = file_suffixes(top_k, num_layers)
    bases = output_names(paths, suffixes)
    planned = [[os.path.join(args.out, b + suffix) for suffix in suffixes] for b in bases]
    clashes = [f for files in planned for f in files if os.path.lexists(f)]
    if clashes and not args.overwrite:
        shown = ", ".join(clashes[:_MAX_CLASHES_SHOWN])
        more = f" and {len(clashes) - _MAX_CLASHES_SHOWN} more" if len(clashes) > _MAX_CLASHES_SHOWN else ""
        raise UsageError(
            f"{len(clashes)} output file(s) already exist: {shown}{more}; pass --overwrite to replace them "
            "(nothing was written)"
        )
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {args.out!r}: {exc.strerror or exc}") from None

    requested = [contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS, contract.OUTPUT_HEATMAP]
    if num_layers > 1:
        requested += [f"{contract.OUTPUT_HEATMAP}_{i}" for i in range(num_layers)]
    common = {
        "model": args.model,
        "target_layer": explainer.target_layer,
        "target_layers": explainer.target_layers,
        "method": explainer.method,
        "top_k": top_k,
        "fused": explainer.fused,
        "requested_class": args.target_class,
        "onnxcam_version": __version__,
        "exported_with_onnxcam_version": explainer.version,
        "onnxruntime_version": onnxruntime.__version__,
        "providers": explainer.providers,
        "input_shape": list(explainer.input_shape),
        "preprocessing": pre,
    }

    progress = Progress(len(paths), stderr)
    progress.start()
    failed = 0
    succeeded = 0
    for start in range(0, len(paths), args.batch_size):
        chunk = list(range(start, min(start + args.batch_size, len(paths))))
        loaded: list[int] = []
        images = []
        for i in chunk:
            try:
                images.append(load_image(paths[i]))
                loaded.append(i)
            except ValueError as exc:
                failed += 1
                progress.message(f"{PROG}: skipping {paths[i]}: {exc}")
        if not loaded:
            progress.update(len(chunk))
            continue
        try:
            batch, display = explainer.preprocess(images, pre)
            expl = explainer.explain(batch, target=args.target_class, outputs=requested)
        except Exception as exc:  # one failing batch must not stop the others
            failed += len(loaded)
            for i in loaded:
                progress.message(f"{PROG}: skipping {paths[i]}: {exc}")
            progress.update(len(chunk))
            continue
        probs = expl.probabilities()
        top_idx, _ = expl.top_k(TOP_K)
        for j, i in enumerate(loaded):
            base = bases[i]
            try:
                shown = cv2.cvtColor(display[j], cv2.COLOR_RGB2BGR)
                pngs: list[tuple[str, bytes]] = []  # (file name, content)
                explained = []
                for r, prefix in enumerate(image_prefixes(top_k)):
                    one = expl[j].rank(r)
                    heat = one.heatmaps[0]
                    entry = _class_entry(int(one.classes[0]), expl.logits[j], probs[j], names)
                    files: dict[str, Any] = {"heatmap": f"{base}{prefix}_heatmap.png", "overlay": f"{base}{prefix}_overlay.png"}
                    pngs.append((files["heatmap"], cv2.imencode(".png", colorize(heat, rgb=False))[1].tobytes()))
                    over = overlay(shown, heat, alpha=args.alpha, rgb=False)
                    pngs.append((files["overlay"], cv2.imencode(".png", over)[1].tobytes()))
                    if num_layers > 1:
                        files["layer_heatmaps"] = []
                        for li, layer in enumerate(one.layers):
                            name = f"{base}{prefix}_layer{li}_heatmap.png"
                            pngs.append((name, cv2.imencode(".png", colorize(layer.heatmaps[0], rgb=False))[1].tobytes()))
                            files["layer_heatmaps"].append({"layer": li, "target_layer": layer.name, "heatmap": name})
                    explained.append((entry, files))
                top5 = [_class_entry(int(c), expl.logits[j], probs[j], names) for c in top_idx[j]]
                if top_k is None:  # input, explained_class, top5, heatmap, overlay (, layer_heatmaps)
                    entry, files = explained[0]
                    record: dict[str, Any] = {"input": paths[i], "explained_class": entry, "top5": top5, **files}
                else:
                    ranks = [{"rank": r + 1, **e, **f} for r, (e, f) in enumerate(explained)]
                    record = {"input": paths[i], "explained_classes": ranks, "top5": top5}
                record.update(common)
                text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
                for name, data in pngs:
                    atomic_write(os.path.join(args.out, name), data)
                atomic_write(os.path.join(args.out, f"{base}.json"), text)
                succeeded += 1
            except Exception as exc:
                failed += 1
                progress.message(f"{PROG}: failed to write the outputs of {paths[i]}: {exc}")
        progress.update(len(chunk))
    progress.close()
    summary = f"{PROG}: explained {succeeded} of {len(paths)} image(s) into {args.out}"
    if failed:
        summary += f"; {failed} failed"
    print(summary, file=stderr, flush=True)
    return 0 if failed == 0 else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point (``python -m onnxcam.cli_explain ...``), for testing without onnxcam.cli."""
    parser = argparse.ArgumentParser(prog="onnxcam")
    sub = parser.add_subparsers(dest="command", required=True)
    add_explain_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
