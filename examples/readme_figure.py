"""Render docs/example_overlays.png (the README's figure) with the public API.

    python examples/readme_figure.py
"""

from pathlib import Path

import cv2
import numpy as np

import onnxcam
from onnxcam.runtime import Explainer, overlay

HERE = Path(__file__).resolve().parent
cam = onnxcam.export(HERE / "mobilenetv2_imagenet.onnx", preprocessing="imagenet",
                     class_names=str(HERE / "imagenet_classes.json"))
explainer = Explainer(cam.SerializeToString(), device="cpu")
photos = [HERE / "bulldog_and_cat.png", HERE / "house_finch.jpg", HERE / "bulldog_and_cat.png"]
explanation, display = explainer.explain_images(photos, target=[-1, -1, 282])
tiles = []
for image, item in zip(display, explanation):
    tile = overlay(image, item.heatmaps[0], alpha=0.5)
    label = explainer.class_names[int(item.classes[0])]
    cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
    tiles.append(tile)
out = HERE.parent / "docs" / "example_overlays.png"
cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))
print("wrote", out)
