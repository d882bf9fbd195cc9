"""Batched class scores from an onnxruntime session: what faithfulness metrics and Score-CAM evaluate.

A :class:`Scorer` runs a classifier on many (perturbed) images, ``batch_size`` at a time, and returns
its logits or softmax probabilities. It accepts the plain model (cheapest: onnxruntime runs every node
of a graph even when only some outputs are fetched, so scoring through an onnxcam export also pays for
the reverse sweep, unless it was exported ``switchable``: then ``onnxcam_explain`` is fed False and
only the forward pass runs) or an onnxcam export (its ``onnxcam_logits`` are read, the class input
fed with "predicted").

Only numpy, onnxruntime and :mod:`onnxcam.contract` are imported.

Example::

    >>> import numpy as np
    >>> scorer = Scorer("mobilenetv2.onnx", device="cpu", batch_size=32)  # doctest: +SKIP
    >>> p = scorer(np.zeros((3, 3, 224, 224), np.float32))  # doctest: +SKIP
    >>> p.shape, bool(np.allclose(p.sum(axis=1), 1))  # doctest: +SKIP
    ((3, 1000), True)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Optional, Union

import numpy as np
import onnxruntime as ort

from onnxcam import contract
from onnxcam.runtime.sessions import model_source, open_session

__all__ = ["ScoreFunction", "Scorer", "softmax"]

#: What metrics and Score-CAM accept: a function from a float32 batch ``[N, C, H, W]`` to
#: probabilities ``[N, num_classes]`` (a :class:`Scorer` is one).
ScoreFunction = Callable[[np.ndarray], np.ndarray]

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax ``exp(z - max z) / sum exp(z - max z)`` along ``axis``.

    Example::

        >>> softmax(np.array([[0.0, np.log(3.0)]])).round(4).tolist()
        [[0.25, 0.75]]
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


class Scorer:
    """Class scores of a classifier, ``batch_size`` images per ``session.run``.

    Args:
        model: path or serialised bytes of an ONNX classifier (the plain model or an onnxcam export),
            or an existing ``onnxruntime.InferenceSession``.
        output: the output holding the scores; default ``onnxcam_logits`` for an onnxcam export, else
            the model's first output.
        scores: what ``output`` holds: "logits" (default; :meth:`probabilities` applies softmax) or
            "probabilities" (used as they are).
        device: "cpu", "cuda" or "auto" (CUDA when onnxruntime has it); ignored for a session.
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        batch_size: images per session run (>= 1).

    Raises:
        FileNotFoundError: no such model file.
        ValueError: bad arguments, an unknown ``output``, a model whose image input is not 4-D.
    """

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]", bytes, ort.InferenceSession],
        *,
        output: Optional[str] = None,
        scores: str = "logits",
        device: str = "cpu",
        threads: Optional[int] = None,
        batch_size: int = 32,
    ) -> None:
        if scores not in ("logits", "probabilities"):
            raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
        self.batch_size = int(batch_size)
        self.scores = scores
        if isinstance(model, ort.InferenceSession):
            self.session = model
            self._source = "<session>"
        else:
            self.session = self._open(model, device, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._target_input = inputs.pop(contract.INPUT_TARGET, None)
        self._switch = inputs.pop(contract.INPUT_EXPLAIN, None) is not None  # a switchable export: forward only
        images = [i for i in inputs.values() if len(i.shape) == 4]
        if len(images) != 1 or len(inputs) != 1:
            raise ValueError(
                f"{self._source}: expected one image input [N, C, H, W] (plus {contract.INPUT_TARGET!r} for an "
                f"onnxcam export), got inputs {[(i.name, i.shape) for i in self.session.get_inputs()]}"
            )
        self.input_name = images[0].name
        self.input_dtype = np.float16 if images[0].type == "tensor(float16)" else np.float32
        outputs = [o.name for o in self.session.get_outputs()]
        if output is None:
            output = contract.OUTPUT_LOGITS if contract.OUTPUT_LOGITS in outputs else outputs[0]
        elif output not in outputs:
            raise ValueError(f"{self._source}: no output {output!r}; the model's outputs are {outputs}")
        self.output = output

    def _open(self, model, device: str, threads: Optional[int]) -> ort.InferenceSession:
        source, self._source = model_source(model)
        available = ort.get_available_providers()
        if device == "cuda" and _CUDA not in available:
            raise ValueError("device='cuda' but onnxruntime has no CUDAExecutionProvider")
        providers = [_CUDA, _CPU] if device != "cpu" and _CUDA in available else [_CPU]
        return open_session(source, self._source, providers, threads)[0]

    def _target(self, n: int) -> np.ndarray:
        shape = self._target_input.shape
        if len(shape) == 2:  # a top-k export: [N, k]
            k = shape[1]
            if not isinstance(k, int):
                raise ValueError(f"{self._source}: top-k input {contract.INPUT_TARGET} has no static k: {shape}")
            return np.full((n, k), -1, np.int64)
        return np.full(n, -1, np.int64)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's scores for ``batch`` (float32 ``[N, C, H, W]``) as float32 ``[N, num_classes]``."""
        x = np.asarray(batch)
        if x.ndim != 4:
            raise ValueError(f"batch must be [N, C, H, W], got shape {x.shape}")
        parts = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(x[start : start + self.batch_size], dtype=self.input_dtype)
            feeds = {self.input_name: chunk}
            if self._target_input is not None:
                feeds[contract.INPUT_TARGET] = self._target(chunk.shape[0])
            if self._switch:
                feeds[contract.INPUT_EXPLAIN] = np.array(False)
            (out,) = self.session.run([self.output], feeds)
            parts.append(np.asarray(out, dtype=np.float32).reshape(chunk.shape[0], -1))
        if not parts:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(parts)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``[N, num_classes]`` (the output itself when ``scores='probabilities'``)."""
        out = self.logits(batch)
        return out if self.scores == "probabilities" else softmax(out, axis=1)

    __call__ = probabilities

    def __repr__(self) -> str:
        return f"Scorer({self._source!r}, output={self.output!r}, scores={self.scores!r}, batch_size={self.batch_size})"
