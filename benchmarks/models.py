"""The benchmarked architectures, their target layers and the LIFT-CAM heads used by the captum recipe.

Every model is a torchvision architecture with its default random initialisation
(``weights=None``; nothing is ever downloaded): speed does not depend on the weights. The builder
seeds torch so that every process (exporter, peers) builds identical weights.

``tiny`` is a small synthetic CNN for the harness's own tests; it is not part of a default run.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str  # key used on the command line and in the results
    label: str  # human-readable, for the table
    target: str  # dotted submodule path of the target layer (``model.get_submodule``)
    input_size: int = 224  # square input, pixels
    gflops: float = 0.0  # multiply-adds per image, 10^9 (orders the jobs, cheapest first)


MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec("resnet50", "ResNet-50", "layer4", gflops=4.1),
    "vgg16": ModelSpec("vgg16", "VGG16", "features.29", gflops=15.5),
    "mobilenet_v2": ModelSpec("mobilenet_v2", "MobileNetV2", "features.18", gflops=0.3),
    "tiny": ModelSpec("tiny", "tiny CNN (test)", "features.3", input_size=32, gflops=0.0001),
}
DEFAULT_MODELS = ("resnet50", "vgg16", "mobilenet_v2")


def build_model(name: str, seed: int = 0):
    """The float32 eval-mode ``torch.nn.Module`` for ``name`` (deterministic given ``seed``)."""
    import torch
    import torch.nn as nn

    spec = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny":
            model = nn.Sequential()
            model.add_module("features", nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
            ))
            model.add_module("pool", nn.AdaptiveAvgPool2d(1))
            model.add_module("flatten", nn.Flatten(1))
            model.add_module("fc", nn.Linear(16, 10))
        else:
            from benchmarks._torchvision import import_torchvision

            tv = import_torchvision()
            model = getattr(tv.models, name)(weights=None)
    model = model.float().eval()
    model.get_submodule(spec.target)  # fail early on a wrong path
    return model


def target_module(name: str, model):
    return model.get_submodule(MODELS[name].target)


def lift_head(name: str, model):
    """The head ``F`` (target activation → logits) for captum ``DeepLift``, sharing ``model``'s weights.

    Every nonlinearity is a distinct, non-inplace module used once, so captum's DeepLift rules reach
    it (the authors' ``Model_Part`` does the same for VGG16 and ResNet-50):

    * resnet50 @ layer4: ``avgpool → flatten → fc``;
    * vgg16 @ features.29: ``features[30] (MaxPool) → avgpool → flatten → classifier`` (ReLUs
      re-created non-inplace, Dropout kept: identity in eval mode);
    * mobilenet_v2 @ features.18: ``AdaptiveAvgPool2d(1) → flatten → classifier``;
    * tiny @ features.3: ``pool → flatten → fc``.
    """
    import torch.nn as nn

    def fresh(modules):
        return [nn.ReLU() if isinstance(m, nn.ReLU) else m for m in modules]

    if name == "resnet50":
        head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
    elif name == "vgg16":
        head = nn.Sequential(*fresh(model.features[30:]), model.avgpool, nn.Flatten(1),
                             nn.Sequential(*fresh(model.classifier)))
    elif name == "mobilenet_v2":
        head = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1), model.classifier)
    elif name == "tiny":
        head = nn.Sequential(model.pool, nn.Flatten(1), model.fc)
    else:
        raise ValueError(f"no LIFT-CAM head for {name!r}")
    return head.eval()
