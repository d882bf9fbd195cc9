"""Model builders for the float64 LIFT-CAM reference.

* ``make_model(name, seed)``: a torchvision architecture in eval mode, float32, with random but
  non-degenerate weights (BatchNorm statistics randomised, classifier rescaled so logits are O(1-10)).
* ``load_real_mobilenet_v2(path)``: torchvision MobileNetV2 with the real ImageNet weights from
  ``../shared/models``; every BatchNorm2d folded into its convolution and replaced by ``nn.Identity``.
* ``split_model(name, model, layer)``: ``f = head ∘ body`` at the target layer, with the head built
  so that captum's DeepLift rules reach every nonlinearity (each activation a distinct module,
  called once).

Pretrained weights are never downloaded: every builder uses ``weights=None``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .torchvision_shim import import_torchvision

SUPPORTED_MODELS = ("vgg16", "resnet50", "resnet18", "mobilenet_v2", "squeezenet1_1")

#: The cuts the tests use (any ``features.N`` / ``layerK`` of these families also works).
OFFICIAL_CUTS = {
    "vgg16": ("features.29",),
    "resnet50": ("layer4",),
    "resnet18": ("layer3",),
    "mobilenet_v2": ("features.14", "features.18"),
    "squeezenet1_1": ("features.12",),
}

REAL_MOBILENET_V2_STATE_DICT = "models/mobilenetv2_imagenet_torchvision_state_dict.pt"

_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def repo_root() -> Path:
    """The repository root (three levels above this file: tests/reference/models.py)."""
    return Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$ONNXCAM_SHARED`` if set, else ``<repo root>/../shared`` (may not exist)."""
    env = os.environ.get("ONNXCAM_SHARED")
    return Path(env) if env else repo_root().parent / "shared"


# --------------------------------------------------------------------------------------------
# Random, non-degenerate models
# --------------------------------------------------------------------------------------------


def _final_layer(name: str, model: nn.Module) -> nn.Module:
    """The last affine layer producing the logits (Linear, or SqueezeNet's 1x1 Conv)."""
    if name == "vgg16":
        return model.classifier[6]
    if name in ("resnet50", "resnet18"):
        return model.fc
    if name in ("mobilenet_v2", "squeezenet1_1"):
        return model.classifier[1]
    raise ValueError(f"unknown model {name!r}; supported: {SUPPORTED_MODELS}")


def make_model(
    name: str,
    seed: int = 0,
    *,
    num_classes: int = 1000,
    calibration_hw: tuple[int, int] = (64, 64),
    logit_std: float = 3.0,
) -> nn.Module:
    """Build torchvision ``name`` (eval, float32) with random non-degenerate weights.

    Recipe (deterministic given ``seed``; the caller's global RNG state is left untouched):

    1. torchvision's own initialisation (``weights=None``) under ``torch.manual_seed(seed)``;
    2. every BatchNorm: ``running_mean ~ N(0, 0.1²)``, ``running_var ~ U(0.5, 1.5)``,
       ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1²)`` (so BN is not the identity in eval mode);
    3. the final classifier layer (weight and bias) is multiplied by ``s > 0`` with
       ``s = logit_std / std(logits)`` measured on 4 standard-normal images of ``calibration_hw``,
       so ``std(logits) ≈ 3`` there (logits O(1-10)). ``s > 0`` commutes with SqueezeNet's final
       ReLU and average pool, so this holds for SqueezeNet too.
    """
    if name not in SUPPORTED_MODELS:
        raise ValueError(f"unknown model {name!r}; supported: {SUPPORTED_MODELS}")
    tv = import_torchvision()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tv.models, name)(weights=None, num_classes=num_classes)
        model = model.float().eval()
        gen = torch.Generator().manual_seed(seed + 1_000_003)
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, _BATCHNORM_TYPES):
                    c = mod.num_features
                    mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                    mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                    if mod.weight is not None:
                        mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                    if mod.bias is not None:
                        mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
            x = torch.randn(4, 3, *calibration_hw, generator=gen)
            logits = model(x)
            std = float(logits.double().std())
            if not (std > 0 and torch.isfinite(logits).all()):
                raise RuntimeError(f"{name}: degenerate logits at calibration (std={std})")
            final = _final_layer(name, model)
            scale = logit_std / std
            final.weight.mul_(scale)
            if final.bias is not None:
                final.bias.mul_(scale)
    return model


# --------------------------------------------------------------------------------------------
# Real MobileNetV2
# --------------------------------------------------------------------------------------------


def _fold_batchnorms(module: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair inside a ``Sequential`` into the conv; BN becomes Identity.

    ``W' = W · s``, ``b' = (b − μ) · s + β`` with ``s = γ / sqrt(σ² + ε)`` (computed in float64).
    Returns the number of folded BatchNorms.
    """
    folded = 0
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules.keys())
        for prev_key, key in zip(keys, keys[1:]):
            conv, bn = seq._modules[prev_key], seq._modules[key]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            with torch.no_grad():
                s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                w = conv.weight.double() * s[:, None, None, None]
                b0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
                b = (b0 - bn.running_mean.double()) * s + bn.bias.double()
                conv.weight.copy_(w.to(conv.weight.dtype))
                conv.bias = nn.Parameter(b.to(conv.weight.dtype))
            seq._modules[key] = nn.Identity()
            folded += 1
    return folded


def load_real_mobilenet_v2(state_dict_path: str | os.PathLike | None = None) -> nn.Module:
    """torchvision ``mobilenet_v2`` with the real ImageNet weights of ``../shared`` (eval, float32).

    ``state_dict_path`` defaults to ``shared_dir()/models/mobilenetv2_imagenet_torchvision_state_dict.pt``.

    Note on "BatchNorm set to identity": the state dict does hold BatchNorm entries, with
    ``γ = 1``, ``μ = 0``, ``σ² = 1 − ε`` but **non-zero β** (β carries the dequantised conv bias,
    |β| up to 3.7). Replacing BN by ``nn.Identity`` outright would drop those biases, so the state
    dict is loaded into the stock architecture and each BN is then folded into its conv
    (``W' = W·s``, ``b' = β − μ·s``, ``s = γ/sqrt(σ²+ε) ≈ 1``) before being replaced by
    ``nn.Identity``. The result matches ``mobilenetv2_imagenet_fp32.onnx`` to ~1e-5.
    """
    tv = import_torchvision()
    path = Path(state_dict_path) if state_dict_path is not None else shared_dir() / REAL_MOBILENET_V2_STATE_DICT
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = tv.models.mobilenet_v2(weights=None)
    model.load_state_dict(state, strict=True)
    model = model.float().eval()
    n = _fold_batchnorms(model)
    left = [m for m in model.modules() if isinstance(m, _BATCHNORM_TYPES)]
    if n != 52 or left:
        raise RuntimeError(f"expected to fold 52 BatchNorms, folded {n}, {len(left)} left")
    return model


# --------------------------------------------------------------------------------------------
# Body / head split
# --------------------------------------------------------------------------------------------


class DeepLiftBasicBlock(nn.Module):
    """torchvision ``BasicBlock`` with two distinct ReLU modules (the original reuses ``self.relu``).

    ``y = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + downsample(x))``; conv/bn/downsample are shared
    with the source block (not copied).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, nn.ReLU()
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class DeepLiftBottleneck(nn.Module):
    """torchvision ``Bottleneck`` with three distinct ReLU modules (the original reuses ``self.relu``).

    ``y = relu3(bn3(conv3(relu2(bn2(conv2(relu1(bn1(conv1(x)))))))) + downsample(x))``.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, nn.ReLU()
        self.conv3, self.bn3, self.relu3 = block.conv3, block.bn3, nn.ReLU()
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu3(out)


def _rebuild_resnet_layer(layer: nn.Sequential) -> nn.Sequential:
    tv = import_torchvision()
    blocks = []
    for block in layer:
        if isinstance(block, tv.models.resnet.BasicBlock):
            blocks.append(DeepLiftBasicBlock(block))
        elif isinstance(block, tv.models.resnet.Bottleneck):
            blocks.append(DeepLiftBottleneck(block))
        else:
            raise TypeError(f"unexpected ResNet block {type(block).__name__}")
    return nn.Sequential(*blocks)


def _features_index(name: str, layer: str, n_features: int) -> int:
    prefix = "features."
    if not layer.startswith(prefix) or not layer[len(prefix):].isdigit():
        raise ValueError(f"{name}: layer must be 'features.N', got {layer!r}")
    idx = int(layer[len(prefix):])
    if not 0 <= idx < n_features:
        raise ValueError(f"{name}: {layer!r} out of range (features has {n_features} modules)")
    return idx


def split_model(name: str, model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    """Split ``model`` at ``layer`` into ``(body, head)`` with ``model(x) == head(body(x))``.

    ``body(x)`` is the output of the module named ``layer`` (e.g. ``"features.29"``, ``"layer4"``);
    ``head`` maps it to the logits. Supported: ``vgg16``/``mobilenet_v2``/``squeezenet1_1`` at
    any ``features.N``, ``resnet18``/``resnet50`` at ``layer1..layer4``.

    Heads (parameters are shared with ``model``, not copied):

    * vgg16: ``features[N+1:] → avgpool → flatten → classifier``;
    * resnet: ``layer{K+1..4}`` rebuilt with distinct ReLUs ``→ avgpool → flatten → fc``;
    * mobilenet_v2: ``features[N+1:] → AdaptiveAvgPool2d(1) → flatten → classifier``;
    * squeezenet1_1: ``features[N+1:] → classifier (Dropout, Conv1x1, ReLU, AdaptiveAvgPool2d(1)) → flatten``.

    Every activation in the head is a distinct module used once, so captum's DeepLift rules apply;
    the only functional operations are linear (flatten, residual adds).
    """
    if name not in SUPPORTED_MODELS:
        raise ValueError(f"unknown model {name!r}; supported: {SUPPORTED_MODELS}")
    if name in ("vgg16", "mobilenet_v2", "squeezenet1_1"):
        feats = model.features
        idx = _features_index(name, layer, len(feats))
        body = nn.Sequential(*feats[: idx + 1])
        rest = list(feats[idx + 1:])
        if name == "vgg16":
            head = nn.Sequential(*rest, model.avgpool, nn.Flatten(1), model.classifier)
        elif name == "mobilenet_v2":
            head = nn.Sequential(*rest, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1), model.classifier)
        else:
            head = nn.Sequential(*rest, model.classifier, nn.Flatten(1))
    else:
        layers = ["layer1", "layer2", "layer3", "layer4"]
        if layer not in layers:
            raise ValueError(f"{name}: layer must be one of {layers}, got {layer!r}")
        k = layers.index(layer)
        body = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                             *[getattr(model, n) for n in layers[: k + 1]])
        head = nn.Sequential(*[_rebuild_resnet_layer(getattr(model, n)) for n in layers[k + 1:]],
                             model.avgpool, nn.Flatten(1), model.fc)
    return body.eval(), head.eval()
