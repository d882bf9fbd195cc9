"""Command line: ``onnxcam export | layers | explain``.

Examples::

    onnxcam layers model.onnx
    onnxcam export model.onnx --layer auto --preprocessing imagenet -o model.cam.onnx
    onnxcam explain model.cam.onnx photo.jpg photos/ --out explanations/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="rewrite an ONNX classifier into a graph that also returns LIFT-CAM heatmaps",
                       description="Rewrite MODEL.onnx into one ONNX graph that also returns LIFT-CAM explanations.")
    p.add_argument("model", help="source .onnx model")
    p.add_argument("--layer", action="append", default=None, metavar="TENSOR",
                   help="target tensor name, or 'auto' (default) for the last 4-D activation before the classifier's "
                   "spatial reduction; repeat for several layers in one graph (outputs suffixed _0, _1, … plus a "
                   "fused onnxcam_heatmap); `onnxcam layers MODEL` lists candidates")
    p.add_argument("--method", default="liftcam", choices=["liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"],
                   help="explanation method (default liftcam)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="explain the K highest-scoring classes of every image in one run (outputs gain a K axis)")
    p.add_argument("--no-fuse", action="store_true", help="with several --layer, do not emit the fused heatmap")
    p.add_argument("--fp16", action="store_true", help="convert the model to float16 first (inputs/outputs stay float32)")
    p.add_argument("-o", "--output", required=True, help="where to write the exported model (e.g. model.cam.onnx)")
    p.add_argument("--explain-output", default=None, help="graph output to explain (default: the first)")
    p.add_argument("--raw", action="store_true", help="also emit onnxcam_activations and onnxcam_multipliers")
    p.add_argument("--switchable", action="store_true",
                   help="add a bool input onnxcam_explain: False runs the forward pass only (one served graph "
                        "for plain and explained requests)")
    p.add_argument("--preprocessing", default=None,
                   help="preset (imagenet, cifar10, mnist) or a JSON object stored in the metadata for the runtime")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input height and width, for models with a dynamic spatial size")
    p.add_argument("--labels", default=None, metavar="FILE.json",
                   help="JSON list of the class names, stored in the metadata (the CLI's manifests use them)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from onnxcam.exporters import export, save

    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    prep = args.preprocessing
    if prep is not None and prep.lstrip().startswith("{"):
        try:
            prep = json.loads(prep)
        except json.JSONDecodeError as exc:
            print(f"error: --preprocessing is not valid JSON: {exc}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    layers = args.layer or ["auto"]
    target = None if layers == ["auto"] else (layers[0] if len(layers) == 1 else layers)
    model = export(args.model, target, output=args.explain_output, method=args.method, top_k=args.top_k,
                   raw=args.raw, preprocessing=prep, class_names=args.labels, fuse=not args.no_fuse, fp16=args.fp16,
                   switchable=args.switchable,
                   input_size=tuple(args.input_size) if args.input_size else None)
    save(model, args.output, overwrite=args.overwrite)
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"target layer: {meta['onnxcam.target_layer']} {meta['onnxcam.target_shape']}"
          f"{' (chosen automatically)' if layers == ['auto'] else ''}; method: {meta['onnxcam.method']}")
    print(f"explained output: {meta['onnxcam.explained_output']} ({meta['onnxcam.num_classes']} classes)")
    print(f"wrote {args.output} in {time.perf_counter() - start:.1f} s")
    return 0


def _layers_parser(sub) -> None:
    p = sub.add_parser("layers", help="list candidate target tensors of an ONNX classifier",
                       description="List 4-D activations that can be explained: name, op, shape, support.")
    p.add_argument("model", help="source .onnx model")
    p.add_argument("--explain-output", default=None, help="graph output to explain (default: the first)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--all", action="store_true", help="also list tensors whose head is not supported")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_layers)


def _run_layers(args) -> int:
    from onnxcam.exporters import list_layers

    size = tuple(args.input_size) if args.input_size else None
    layers = list_layers(args.model, output=args.explain_output, input_size=size)
    auto = next((layer.name for layer in layers if layer.auto), None)
    shown = [layer for layer in layers if args.all or layer.supported]
    if args.json:
        print(json.dumps([{"name": l.name, "op_type": l.op_type, "shape": list(l.shape), "supported": l.supported,
                           "reason": l.reason, "auto": l.name == auto} for l in shown], indent=2))
        return 0
    width = max([len(l.name) for l in shown] + [4])
    print(f"{'name':<{width}}  {'op':<18} {'shape (K, h, w)':<18} supported")
    for l in shown:
        mark = "yes" if l.supported else f"no: {l.reason}"
        auto_mark = "   <- auto" if l.name == auto else ""
        print(f"{l.name:<{width}}  {l.op_type:<18} {str(list(l.shape)):<18} {mark}{auto_mark}")
    hidden = len(layers) - len(shown)
    if hidden:
        print(f"({hidden} more without a supported head; --all shows them)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from onnxcam._version import __version__

    parser = argparse.ArgumentParser(prog="onnxcam", description="LIFT-CAM explanations inside one ONNX graph.")
    parser.add_argument("--version", action="version", version=f"onnxcam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the exporter decides")
    sub = parser.add_subparsers(dest="command", required=True)
    _export_parser(sub)
    _layers_parser(sub)
    from onnxcam.cli_explain import add_explain_parser, run_explain
    from onnxcam.cli_gallery import add_gallery_parser, run_gallery

    for add, name, run in ((add_explain_parser, "explain", run_explain), (add_gallery_parser, "gallery", run_gallery)):
        add(sub)
        sub.choices[name].set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError) as exc:  # ExportError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
