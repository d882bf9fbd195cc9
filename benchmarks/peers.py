"""The PyTorch contenders: the authors' LIFT-CAM recipe (captum), pytorch-grad-cam and torchcam.

Every contender is a callable ``f(x) -> outputs`` on a float32 ``[N, 3, S, S]`` tensor that, like
the exported graph, computes the logits, explains the **predicted class of each image** (per-sample
targets, batched) and returns a heatmap at the input resolution, min-max normalised per image.
Nothing is converted to numpy unless the library does so itself.
"""
from __future__ import annotations

import importlib.util
import warnings

from benchmarks.models import MODELS, lift_head, target_module

#: name → (label, python module whose presence decides availability, pip distribution)
PEERS = {
    "captum_liftcam": ("LIFT-CAM, authors' recipe (captum DeepLift)", "captum", "captum"),
    "pytorch_grad_cam": ("pytorch-grad-cam GradCAM", "pytorch_grad_cam", "grad-cam"),
    "torchcam": ("torchcam GradCAM", "torchcam", "torchcam"),
}
#: Context only (timed in the captum process): the plain PyTorch forward, no explanation.
TORCH_FORWARD = "torch_forward"
TORCH_FORWARD_LABEL = "PyTorch forward, no explanation (context)"


def available(peer: str) -> tuple[bool, str]:
    """Whether ``peer`` can run here (its module is importable), with the reason when not."""
    _, module, dist = PEERS[peer]
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    if importlib.util.find_spec(module) is None:
        return False, f"{dist} is not installed (pip install {dist})"
    return True, ""


def _normalise(maps):
    """Per-image min-max to [0, 1] of ``[N, H, W]`` (a constant map gives 0)."""
    import torch

    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    span = (flat.max(1).values[:, None, None] - low)
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


class CaptumLiftCam:
    """The authors' LIFT-CAM recipe (``Explanation.py::lift_cam`` of Hyungsik-Jung/LIFT-CAM), batched.

    A forward hook on the target layer captures ``A`` during one forward pass (run under
    ``torch.no_grad()``: captum needs no graph of the body; the authors' code keeps autograd on,
    which only costs more), ``class = argmax(logits)`` per image, then captum
    ``DeepLift(head).attribute(A, baselines=0, target=classes)`` gives the contributions,
    ``phi = sum_ij``, ``map = ReLU(sum_k phi_k A_k)``, bilinear (half-pixel) resize to the input size
    and per-image min-max normalisation.
    """

    def __init__(self, model_name: str, model) -> None:
        from captum.attr import DeepLift

        self.model = model
        self.size = MODELS[model_name].input_size
        self.activation = None
        target_module(model_name, model).register_forward_hook(self._hook)
        self.head = lift_head(model_name, model)
        self.deeplift = DeepLift(self.head)

    def _hook(self, _module, _inputs, output) -> None:
        self.activation = output

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            logits = self.model(x)
        act = self.activation.detach()
        classes = logits.argmax(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            contributions = self.deeplift.attribute(act, baselines=torch.zeros_like(act), target=classes)
        with torch.no_grad():
            phi = contributions.sum((2, 3))
            cam = torch.relu((phi[:, :, None, None] * act).sum(1, keepdim=True))
            heat = F.interpolate(cam, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]
            return logits, classes, phi, cam[:, 0], _normalise(heat)


class PytorchGradCam:
    """``pytorch_grad_cam.GradCAM(model, target_layers=[layer])(input_tensor=x, targets=None)``.

    Used as its README shows: ``targets=None`` explains the top class of every image; the library
    backpropagates through the whole network (parameters keep ``requires_grad=True``), resizes the
    maps to the input size with OpenCV and normalises them; it returns a numpy array.
    """

    def __init__(self, model_name: str, model) -> None:
        from pytorch_grad_cam import GradCAM

        self.cam = GradCAM(model=model, target_layers=[target_module(model_name, model)])

    def __call__(self, x):
        heat = self.cam(input_tensor=x, targets=None)
        return self.cam.outputs, heat


class TorchCamGradCam:
    """``torchcam.methods.GradCAM(model, target_layer=name)``: forward with autograd, then
    ``extractor(class_idx=argmax per image, scores=logits)``; torchcam returns the normalised
    low-resolution map, which is then resized bilinear (half-pixel) to the input size."""

    def __init__(self, model_name: str, model) -> None:
        from torchcam.methods import GradCAM

        spec = MODELS[model_name]
        self.model = model
        self.size = spec.input_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.extractor = GradCAM(model, target_layer=spec.target, input_shape=(3, spec.input_size, spec.input_size))

    def __call__(self, x):
        import torch.nn.functional as F

        logits = self.model(x)
        classes = logits.argmax(1).tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cams = self.extractor(class_idx=classes, scores=logits)
        heat = F.interpolate(cams[0][:, None], size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]
        return logits.detach(), classes, cams[0], heat


class TorchForward:
    """The plain PyTorch forward under ``torch.inference_mode()`` (context for the peers' ratios)."""

    def __init__(self, model_name: str, model) -> None:
        self.model = model

    def __call__(self, x):
        import torch

        with torch.inference_mode():
            return self.model(x)


FACTORIES = {
    "captum_liftcam": CaptumLiftCam,
    "pytorch_grad_cam": PytorchGradCam,
    "torchcam": TorchCamGradCam,
    TORCH_FORWARD: TorchForward,
}


def make_peer(peer: str, model_name: str, model):
    if peer == "pytorch_grad_cam":
        # pytorch_grad_cam imports torchvision; a CUDA torchvision wheel on CPU torch needs the shim.
        from benchmarks._torchvision import import_torchvision

        import_torchvision()
    return FACTORIES[peer](model_name, model)
