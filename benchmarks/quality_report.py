"""Markdown rendering of ``python -m benchmarks.quality`` results (standard library only).

``python -m benchmarks.quality_report OUT/quality.json`` re-renders the table from a results file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

SCHEMA = "onnxcam.quality/1"

#: (JSON key, column title, digits) of the metric columns, in table order.
COLUMNS = (
    ("average_drop", "Average Drop % ↓", 1),
    ("increase_in_confidence", "Increase in Conf. % ↑", 0),
    ("deletion_auc", "Deletion AUC ↓", 3),
    ("insertion_auc", "Insertion AUC ↑", 3),
)


def _interval(stats: dict, digits: int) -> str:
    return f"{stats['mean']:.{digits}f} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _time_cell(entry: dict) -> str:
    cell = _seconds(entry.get("time_per_image_s"))
    if "forward_passes_per_image" in entry:
        cell += f" ({entry['forward_passes_per_image']:.0f} passes)"
    return cell


def _model_section(name: str, model: dict, settings: dict) -> list[str]:
    n = len(model["images"])
    shape = "×".join(str(v) for v in model.get("target_shape", []))
    explained = f"the {model['explained']} class is explained"
    if model["explained"] == "labelled":
        explained += f" (the model's top-1 accuracy on these images: {100 * model['top1_agreement']:.0f} %)"
    lines = [
        f"## {name}: `{model['model']}`",
        "",
        f"Target layer `{model['target_layer']}` ({shape}); {n} images; {explained}; preset "
        f"\"{model['preset']}\"; {settings['steps']} deletion/insertion steps; {model['duration_s']:.0f} s for this model.",
        "",
        "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " | time / image |",
        "| --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |",
    ]
    for method, entry in model["methods"].items():
        cells = [_interval(entry["metrics"][key], digits) for key, _, digits in COLUMNS]
        twin = entry.get("same_maps_as")
        label = f"{method} (= {twin})" if twin else method
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_time_cell(entry)} |")
    lines.append("")
    return lines


def to_markdown(results: dict) -> str:
    """The results as a markdown report: settings, then one table per model."""
    settings = results["settings"]
    machine = results.get("machine", {})
    git = machine.get("git", {})
    status = "complete" if results.get("complete") else "partial (interrupted or still running)"
    lines = [
        "# Faithfulness of the CAM methods (`python -m benchmarks.quality`)",
        "",
        f"Command: `{results.get('command', '')}` ({status}, {results.get('duration_s', float('nan')):.0f} s). "
        f"{machine.get('date', '')}, commit {str(git.get('commit') or '?')[:10]}, {machine.get('cpu_model', '?')}, "
        f"{machine.get('cpus_available', '?')} CPUs available, onnxruntime threads: {settings.get('threads') or 'default'}.",
        "",
        "Each cell: mean over the images [95 % percentile-bootstrap interval, "
        f"{settings['resamples']} resamples]. Scores are softmax probabilities of the explained class from the "
        "plain model. Average Drop / Increase in Confidence (Grad-CAM++): explanation image `H ⊙ x` "
        "(H = the map min-max normalised; baseline 0 in model-input space, the dataset's mean colour). "
        f"Deletion (RISE): the most salient pixels replaced by 0 (the mean colour), {settings['steps']} equal steps; "
        "insertion: from the image blurred by an 11×11, sigma-5 Gaussian. ↓ lower is better, ↑ higher is better. "
        "`random` (uniform noise) and `centre` (a Gaussian bump, sigma = a quarter of the shorter side) are "
        "sanity floors that look at no model. Per-pixel deletion along a map of independent noise scatters "
        "the removed pixels over the whole image, which can destroy the prediction faster than removing the "
        "object (an off-distribution image), so `random` may score a low deletion AUC: read deletion together "
        "with insertion and Average Drop. \"(= m)\" marks maps equal to method m's (within 1e-4): with a "
        "global-average-pool + linear head, Grad-CAM, XGrad-CAM and HiResCAM coincide.",
        "",
        "Time / image: the explanation alone after a warm-up run (exported methods: the explaining graph's "
        "`session.run`; Score-CAM: the activations' run plus all its forward passes, one per non-constant "
        "channel plus one baseline per batch); export, session creation and preprocessing excluded. Shared "
        "machine: timings include other load.",
        "",
    ]
    for name, model in results["models"].items():
        lines += _model_section(name, model, settings)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.quality_report OUT/quality.json", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    if results.get("schema") != SCHEMA:
        print(f"{argv[0]}: not a {SCHEMA} results file", file=sys.stderr)
        return 2
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
