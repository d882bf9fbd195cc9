"""Run an onnxcam-exported model with onnxruntime: :class:`Explainer` and :class:`Explanation`.

Only the standard library, numpy, OpenCV, onnxruntime and :mod:`onnxcam.contract` are imported here
(never onnx or torch), so a serving environment needs nothing else.

Every kind of exported graph is handled:

* any CAM method (``onnxcam.method``: liftcam, gradcam, gradcam++, xgradcam, hirescam, layercam);
  the outputs are the same, :attr:`Explainer.method` says which;
* top-k models (``onnxcam.top_k`` = k): one run explains the k highest-scoring classes of every
  image; the per-class results gain a ``k`` axis after ``N`` (see :class:`Explanation`);
* several target layers: per-layer results in :attr:`Explanation.layers`, and
  :attr:`Explanation.heatmaps` is the fused heatmap when the model has one.

Example::

    >>> from onnxcam.runtime import Explainer, overlay
    >>> explainer = Explainer("resnet50.cam.onnx", device="cpu")  # doctest: +SKIP
    >>> expl, display = explainer.explain_images(["cat.jpg"])  # doctest: +SKIP
    >>> indices, logits = expl.top_k(5)  # doctest: +SKIP
    >>> picture = overlay(display[0], expl.heatmaps[0])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import onnxruntime as ort

from onnxcam import contract
from onnxcam.runtime.images import color_channels, load_image, preprocess, validate_preprocessing
from onnxcam.runtime.sessions import model_source, open_session

__all__ = ["DEFAULT_OUTPUTS", "META_CLASS_NAMES", "Explainer", "Explanation", "LayerExplanation"]

#: Optional metadata key with the class names (JSON list of C strings). Not (yet) part of the
#: graph contract; read when present.
META_CLASS_NAMES = contract.META_CLASS_NAMES

#: Outputs fetched by :meth:`Explainer.explain` from a single-layer model when ``outputs`` is not
#: given (plus the raw ones when the model has them). A model with several target layers has
#: per-layer outputs instead (``onnxcam_coefficients_0``...); :attr:`Explainer.outputs` lists them.
DEFAULT_OUTPUTS = contract.STANDARD_OUTPUTS

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"

# Per-layer contract outputs (suffixed ``_0``, ``_1``... when a model has several target layers) and
# the LayerExplanation / Explanation field each feeds, in contract order.
_LAYER_OUTPUTS = (
    (contract.OUTPUT_COEFFICIENTS, "coefficients"),
    (contract.OUTPUT_MAP, "maps"),
    (contract.OUTPUT_HEATMAP, "heatmaps"),
    (contract.OUTPUT_ACTIVATIONS, "activations"),
    (contract.OUTPUT_MULTIPLIERS, "multipliers"),
)
_LAYER_FIELDS = tuple(f for _, f in _LAYER_OUTPUTS)
# Per-layer fields without the top-k ``k`` axis (the activations do not depend on the class).
_UNRANKED_FIELDS = ("activations",)
# Always fetched: an Explanation without the scores and the explained class makes no sense.
_REQUIRED_OUTPUTS = (contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS)

_ORT_FLOAT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def _layer_output(name: str, index: int, several: bool) -> str:
    """The graph output ``name`` of target layer ``index`` (suffixed only when there are several)."""
    return f"{name}_{index}" if several else name


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(eq=False)
class LayerExplanation:
    """The results of one target layer (an entry of :attr:`Explanation.layers`).

    Shapes as in :class:`Explanation` (``[N, ...]``, or ``[N, k, ...]`` for a top-k model; the
    activations never have the ``k`` axis); a field is None when its output was not fetched.

    Attributes:
        name: the target tensor's name in the source model (None when unknown).
        coefficients: float32 ``[N, (k,) K]`` channel weights.
        maps: float32 ``[N, (k,) h, w]`` class-activation maps (not normalised).
        heatmaps: float32 ``[N, (k,) H, W]`` this layer's heatmaps, in [0, 1].
        activations: float32 ``[N, K, h, w]`` target activations (raw models only).
        multipliers: float32 ``[N, (k,) K, h, w]`` multipliers / gradients (raw models only).
    """

    name: Optional[str] = None
    coefficients: Optional[np.ndarray] = None
    maps: Optional[np.ndarray] = None
    heatmaps: Optional[np.ndarray] = None
    activations: Optional[np.ndarray] = None
    multipliers: Optional[np.ndarray] = None

    def _apply(self, ranked: Callable[[np.ndarray], np.ndarray], unranked: Callable[[np.ndarray], np.ndarray]) -> "LayerExplanation":
        values = {}
        for name in _LAYER_FIELDS:
            array = getattr(self, name)
            fn = unranked if name in _UNRANKED_FIELDS else ranked
            values[name] = None if array is None else fn(array)
        return LayerExplanation(name=self.name, **values)

    def __repr__(self) -> str:
        parts = [f"{f}={tuple(getattr(self, f).shape)}" for f in _LAYER_FIELDS if getattr(self, f) is not None]
        return f"LayerExplanation({self.name!r}" + "".join(", " + p for p in parts) + ")"


@dataclass(eq=False)
class Explanation:
    """The CAM explanation of a batch of N images (arrays as returned by the model).

    Attributes:
        logits: float32 ``[N, C]``, the explained scores ``y`` (pre-softmax).
        classes: int64 ``[N]``, the class ``c`` explained for each image; ``[N, k]`` for a top-k model
            (``classes[i, r]`` is the class explained at rank ``r``, best first).
        coefficients: float32 ``[N, K]`` channel weights (LIFT-CAM: ``phi_k = sum_ij A_kij * m_kij``,
            the DeepLIFT contributions of the target-layer channels to ``y_c`` against a zero
            reference; the Grad-CAM family: its own weights), or None if not fetched.
        maps: float32 ``[N, h, w]``, ``L = ReLU(sum_k phi_k A_k)``, or None if not fetched.
        heatmaps: float32 ``[N, H, W]``, ``L`` resized bilinear (half-pixel) to the input size and
            min-max normalised per image to [0, 1] (a constant map gives 0), or None if not fetched.
            With several target layers and a fused heatmap (``fused`` true): the per-pixel mean of
            the layers' heatmaps, renormalised to [0, 1].
        activations: float32 ``[N, K, h, w]`` target-layer activations ``A`` (raw models only).
        multipliers: float32 ``[N, K, h, w]`` DeepLIFT multipliers ``dy_c/dA`` (gradients for the
            Grad-CAM family) (raw models only).
        layers: one :class:`LayerExplanation` per target layer, in the model's order. Filled from the
            fields above when not given (one layer, ``name`` None).
        fused: whether ``heatmaps`` is the fused heatmap of several target layers (then it is not
            ``layers[0].heatmaps``, and it is None when the fused output was not fetched).

    **Top-k models** (:attr:`Explainer.top_k` = k): every per-class array gains a ``k`` axis after
    ``N``: ``classes [N, k]``, ``coefficients [N, k, K]``, ``maps [N, k, h, w]``, ``heatmaps
    [N, k, H, W]``, ``multipliers [N, k, K, h, w]``; ``logits`` and ``activations`` do not. :attr:`k`
    tells it; :meth:`rank` drops the axis (the explanation of one rank, shaped like a single-class one).

    **Several target layers**: ``layers[i]`` holds layer ``i``'s results. The top-level
    ``coefficients``, ``maps``, ``activations`` and ``multipliers`` are the first layer's
    (``layers[0]``); ``heatmaps`` is the fused heatmap when the model has one (``fused``), else the
    first layer's too. With one layer, ``layers[0]`` holds the top-level arrays themselves.

    ``len(expl)`` is N; ``expl[i]`` is the same dataclass for image ``i`` alone (N = 1, arrays are
    views, the ``k`` axis and the layers kept); ``expl[a:b]`` slices; iterating yields the per-image
    explanations.

    Example::

        >>> import numpy as np
        >>> e = Explanation(logits=np.array([[1.0, 3.0, 2.0]], np.float32), classes=np.array([1]))
        >>> e.top_k(2)[0].tolist()
        [[1, 2]]
        >>> round(float(e.probabilities()[0, 1]), 4)
        0.6652
        >>> t = Explanation(logits=e.logits, classes=np.array([[1, 2]]), maps=np.zeros((1, 2, 4, 4), np.float32))
        >>> t.k, t.rank(1).classes.tolist(), t.rank(1).maps.shape
        (2, [2], (1, 4, 4))
    """

    logits: np.ndarray
    classes: np.ndarray
    coefficients: Optional[np.ndarray] = None
    maps: Optional[np.ndarray] = None
    heatmaps: Optional[np.ndarray] = None
    activations: Optional[np.ndarray] = None
    multipliers: Optional[np.ndarray] = None
    layers: Optional[tuple[LayerExplanation, ...]] = field(default=None, repr=False)
    fused: bool = False

    def __post_init__(self) -> None:
        if self.layers is None:
            self.layers = (
                LayerExplanation(
                    coefficients=self.coefficients,
                    maps=self.maps,
                    heatmaps=None if self.fused else self.heatmaps,
                    activations=self.activations,
                    multipliers=self.multipliers,
                ),
            )
            return
        self.layers = tuple(self.layers)
        if not self.layers or not all(isinstance(layer, LayerExplanation) for layer in self.layers):
            raise ValueError("layers must be a non-empty sequence of LayerExplanation")
        first = self.layers[0]
        for name in _LAYER_FIELDS:
            if getattr(self, name) is None and not (name == "heatmaps" and self.fused):
                setattr(self, name, getattr(first, name))

    @property
    def k(self) -> Optional[int]:
        """Classes explained per image of a top-k model (the ``k`` axis), None for one class per image."""
        return int(self.classes.shape[1]) if self.classes.ndim == 2 else None

    @property
    def target_layers(self) -> list[Optional[str]]:
        """The names of :attr:`layers` (None where unknown)."""
        return [layer.name for layer in self.layers]  # type: ignore[union-attr]

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def _apply(self, ranked: Callable[[np.ndarray], np.ndarray], unranked: Callable[[np.ndarray], np.ndarray]) -> "Explanation":
        """A new Explanation: ``ranked`` applied to the arrays with a ``k`` axis (when top-k), else ``unranked``."""
        return Explanation(
            logits=unranked(self.logits),
            classes=ranked(self.classes),
            heatmaps=ranked(self.heatmaps) if self.fused and self.heatmaps is not None else None,
            layers=tuple(layer._apply(ranked, unranked) for layer in self.layers),  # type: ignore[union-attr]
            fused=self.fused,
        )

    def __getitem__(self, index: Union[int, slice]) -> "Explanation":
        n = len(self)
        if isinstance(index, slice):
            sel = index
        elif _is_int(index):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"image index {i} out of range for an Explanation of {n} image(s)")
            i %= n
            sel = slice(i, i + 1)
        else:
            raise TypeError(f"Explanation indices must be int or slice, got {type(index).__name__}")
        return self._apply(lambda a: a[sel], lambda a: a[sel])

    def __iter__(self) -> Iterator["Explanation"]:
        for i in range(len(self)):
            yield self[i]

    def rank(self, r: int) -> "Explanation":
        """The explanation of rank ``r`` (0-based: 0 is the best class) of a top-k explanation.

        The ``k`` axis is dropped: ``classes [N]``, ``coefficients [N, K]``, ``heatmaps [N, H, W]``...
        (arrays are views; logits and activations unchanged). For a single-class explanation only
        ``r = 0`` (or -1) is valid and returns ``self``.
        """
        if not _is_int(r):
            raise TypeError(f"rank must be an int, got {type(r).__name__}")
        k = self.k
        count = 1 if k is None else k
        if not -count <= int(r) < count:
            raise IndexError(f"rank {int(r)} out of range for an explanation of {count} class(es) per image")
        if k is None:
            return self
        r = int(r) % k
        return self._apply(lambda a: a[:, r], lambda a: a)

    def __repr__(self) -> str:
        names = ("logits", "classes", *_LAYER_FIELDS)
        parts = [f"{f}={tuple(getattr(self, f).shape)}" for f in names if getattr(self, f) is not None]
        extra = ""
        if self.k is not None:
            extra += f", k={self.k}"
        if len(self.layers) > 1:  # type: ignore[arg-type]
            extra += f", layers={len(self.layers)}, fused={self.fused}"  # type: ignore[arg-type]
        return f"Explanation(N={len(self)}{extra}, " + ", ".join(parts) + ")"

    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``exp(y - max y) / sum exp(y - max y)`` per image (float32 ``[N, C]``).

        Computed in float64 after subtracting the per-image maximum, so it never overflows.
        """
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def top_k(self, k: int = 5, scores: str = "logits") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest-scoring classes per image, from the logits.

        This ranks the scores only; it does not depend on what was explained. For a top-k model
        explained with the default target, ``classes`` equals ``top_k(self.k)[0]`` (up to ties).

        Args:
            k: how many (clamped to the number of classes C); at least 1.
            scores: "logits" (default) or "probabilities": which values to return beside the indices.
                The order is the same for both (softmax is monotonic); ties keep the lower index first.

        Returns:
            ``(indices, values)``: int64 ``[N, k]`` and float32 ``[N, k]``, best first.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if scores not in ("logits", "probabilities"):
            raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}")
        k = min(int(k), self.logits.shape[1])
        order = np.argsort(-self.logits, axis=1, kind="stable")[:, :k].astype(np.int64)
        values = self.logits if scores == "logits" else self.probabilities()
        return order, np.take_along_axis(values, order, axis=1)

    @classmethod
    def concatenate(cls, parts: Sequence["Explanation"]) -> "Explanation":
        """Join explanations of consecutive batches into one (fields missing in any part become None).

        The parts must have the same layers, ``k`` and ``fused``.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate (no explanations)")

        def cat(arrays: list) -> Optional[np.ndarray]:
            return None if any(a is None for a in arrays) else np.concatenate(arrays, axis=0)

        first = parts[0]
        for p in parts[1:]:
            if len(p.layers) != len(first.layers) or p.fused != first.fused:  # type: ignore[arg-type]
                raise ValueError("cannot concatenate explanations with different target layers or fusion")
            if p.k != first.k:
                raise ValueError(f"cannot concatenate explanations with k={first.k} and k={p.k}")
        logits = cat([p.logits for p in parts])
        classes = cat([p.classes for p in parts])
        if logits is None or classes is None:
            raise ValueError("every explanation must have logits and classes")
        layers = tuple(
            LayerExplanation(
                name=first.layers[i].name,  # type: ignore[index]
                **{f: cat([getattr(p.layers[i], f) for p in parts]) for f in _LAYER_FIELDS},  # type: ignore[index]
            )
            for i in range(len(first.layers))  # type: ignore[arg-type]
        )
        heatmaps = cat([p.heatmaps for p in parts]) if first.fused else None
        return cls(logits=logits, classes=classes, heatmaps=heatmaps, layers=layers, fused=first.fused)


def _parse_json_meta(meta: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{source}: metadata {key!r} is not valid JSON ({exc}): {meta[key]!r}") from None


class Explainer:
    """An onnxruntime session on an onnxcam-exported model (see :mod:`onnxcam.contract`).

    Args:
        path_or_bytes: path to the ``.onnx`` file, or its serialised bytes.
        device: "auto" (CUDA when onnxruntime has ``CUDAExecutionProvider``, else CPU with a
            ``RuntimeWarning`` saying why), "cuda" (ValueError when unavailable) or "cpu".
        providers: explicit onnxruntime providers (overrides ``device``), e.g.
            ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` or with options tuples.
        threads: onnxruntime intra-op thread count (None: onnxruntime's default).
        session_config: onnxruntime session config entries (``SessionOptions.add_session_config_entry``),
            applied over those the exporter recommended in the model's ``onnxcam.session_config``
            metadata (e.g. ``session.disable_prepacking`` for heads with large classifier weights;
            pass ``{"session.disable_prepacking": "0"}`` to override it). :attr:`session_config`
            tells what was applied.

    Raises:
        FileNotFoundError: no such model file.
        ValueError: bad ``device``, CUDA requested but unavailable, onnxruntime cannot load the file,
            or the model is not an onnxcam export (no ``onnxcam.version`` metadata) or its metadata
            is inconsistent with its inputs/outputs.

    Example::

        >>> import numpy as np
        >>> explainer = Explainer("model.cam.onnx", device="cpu")  # doctest: +SKIP
        >>> c, h, w = explainer.input_shape  # doctest: +SKIP
        >>> expl = explainer.explain(np.zeros((2, c, h, w), np.float32), target=[3, -1])  # doctest: +SKIP
        >>> expl.classes  # doctest: +SKIP
        array([3, 0])

    A top-k model (exported with ``top_k=3``) explains three classes per image; a model with several
    target layers has per-layer results::

        >>> topk = Explainer("model.top3.cam.onnx", device="cpu")  # doctest: +SKIP
        >>> topk.top_k, topk.explain(batch, target=[-1, -1, 7]).classes.shape  # doctest: +SKIP
        (3, (2, 3))
        >>> two = Explainer("model.two_layers.cam.onnx", device="cpu")  # doctest: +SKIP
        >>> expl = two.explain(batch)  # doctest: +SKIP
        >>> two.target_layers, expl.fused, expl.layers[1].heatmaps.shape  # doctest: +SKIP
        (['layer3', 'layer2'], True, (2, 32, 32))
    """

    def __init__(
        self,
        path_or_bytes: Union[str, "os.PathLike[str]", bytes],
        device: str = "auto",
        providers: Optional[Sequence[Any]] = None,
        threads: Optional[int] = None,
        session_config: Optional[Mapping[str, str]] = None,
    ) -> None:
        model, self._source = model_source(path_or_bytes)
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")

        self._fallback_note: Optional[str] = None
        if providers is not None:
            chosen = list(providers)
            if not chosen:
                raise ValueError("providers must not be empty")
        else:
            available = ort.get_available_providers()
            if device == "cpu":
                chosen = [_CPU]
            elif _CUDA in available:
                chosen = [_CUDA, _CPU]
            elif device == "cuda":
                raise ValueError(
                    "device='cuda' but onnxruntime has no CUDAExecutionProvider (available: "
                    f"{', '.join(available)}); install onnxcam[gpu] (onnxruntime-gpu) or use device='cpu'"
                )
            else:
                chosen = [_CPU]
                self._fallback_note = (
                    "onnxruntime has no CUDAExecutionProvider (install onnxcam[gpu]); using CPU"
                )

        # The exporter's session-config recommendations are read before the session exists (no onnx).
        self._session, self._session_config = open_session(model, self._source, chosen, threads, session_config)

        actual = self._session.get_providers()
        if providers is None and _CUDA in chosen and _CUDA not in actual:
            note = (
                "CUDAExecutionProvider is installed but could not be initialised (check the CUDA and "
                "cuDNN libraries onnxruntime-gpu needs)"
            )
            if device == "cuda":
                raise ValueError(f"device='cuda' but {note}")
            self._fallback_note = f"{note}; using CPU"
        if self._fallback_note is not None:
            warnings.warn(self._fallback_note, RuntimeWarning, stacklevel=2)

        self._read_metadata()
        self._use_iobinding = _CUDA in actual

    # ------------------------------------------------------------------ metadata
    def _read_metadata(self) -> None:
        src = self._source
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self._metadata = meta
        if contract.META_VERSION not in meta:
            raise ValueError(
                f"{src} is not an onnxcam-exported model (no {contract.META_VERSION} metadata); "
                "export it with `onnxcam export`"
            )
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]

        self._input_name = meta.get(contract.META_INPUT)
        if self._input_name is None:
            others = [n for n in inputs if n != contract.INPUT_TARGET]
            if len(others) != 1:
                raise ValueError(f"{src}: no {contract.META_INPUT} metadata and cannot tell the image input")
            self._input_name = others[0]
        for name in (self._input_name, contract.INPUT_TARGET):
            if name not in inputs:
                raise ValueError(f"{src}: the model has no input {name!r} (inputs: {sorted(inputs)})")
        self._switchable = contract.INPUT_EXPLAIN in inputs
        if self._switchable and inputs[contract.INPUT_EXPLAIN].type != "tensor(bool)":
            raise ValueError(f"{src}: input {contract.INPUT_EXPLAIN!r} must be a bool scalar")
        extra = sorted(set(inputs) - {self._input_name, contract.INPUT_TARGET, contract.INPUT_EXPLAIN})
        if extra:
            raise ValueError(f"{src}: unexpected extra model inputs {extra}")
        self._input_dtype = _ORT_FLOAT_TYPES.get(inputs[self._input_name].type)
        if self._input_dtype is None:
            raise ValueError(
                f"{src}: image input {self._input_name!r} has type {inputs[self._input_name].type}; "
                "expected a float tensor"
            )

        if contract.META_INPUT_SHAPE in meta:
            shape = _parse_json_meta(meta, contract.META_INPUT_SHAPE, src)
        else:
            shape = inputs[self._input_name].shape[1:]
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            raise ValueError(f"{src}: cannot tell the input shape [C, H, W] (got {shape!r})")
        self._input_shape = tuple(shape)

        try:
            self._num_classes = int(meta[contract.META_NUM_CLASSES])
        except (KeyError, ValueError):
            raise ValueError(
                f"{src}: metadata {contract.META_NUM_CLASSES!r} missing or not an integer "
                f"({meta.get(contract.META_NUM_CLASSES)!r})"
            ) from None

        self._read_layers(meta, outputs)
        self._read_top_k(meta, inputs[contract.INPUT_TARGET])

        self._preprocessing: Optional[dict] = None
        if contract.META_PREPROCESSING in meta:
            pre = _parse_json_meta(meta, contract.META_PREPROCESSING, src)
            if pre is not None:
                try:
                    pre = validate_preprocessing(pre)
                except ValueError as exc:
                    raise ValueError(f"{src}: invalid {contract.META_PREPROCESSING} metadata: {exc}") from None
                self._preprocessing = pre

        self._class_names: Optional[list[str]] = None
        if META_CLASS_NAMES in meta:
            names = _parse_json_meta(meta, META_CLASS_NAMES, src)
            if isinstance(names, list) and len(names) == self._num_classes:
                self._class_names = [str(n) for n in names]

    def _read_layers(self, meta: dict[str, str], outputs: list[str]) -> None:
        """Target layers, their shapes, the onnxcam outputs present, and whether a fused heatmap is."""
        src = self._source
        present = set(outputs)
        per_layer = [name for name, _ in _LAYER_OUTPUTS]
        several = contract.OUTPUT_COEFFICIENTS not in present and any(f"{n}_0" in present for n in per_layer)
        if several:
            count = 0
            while any(f"{n}_{count}" in present for n in per_layer):
                count += 1
            if count < 2:
                raise ValueError(f"{src}: per-layer outputs (suffixed _0) for a single layer; expected at least two layers")
            if contract.META_TARGET in meta:
                layers = _parse_json_meta(meta, contract.META_TARGET, src)
                if not (isinstance(layers, list) and len(layers) == count and all(isinstance(n, str) for n in layers)):
                    raise ValueError(
                        f"{src}: metadata {contract.META_TARGET!r} must be a JSON list of the {count} target "
                        f"layer names (the model has {count} sets of per-layer outputs), got {meta[contract.META_TARGET]!r}"
                    )
            else:
                layers = [None] * count
        else:
            count = 1
            layers = [meta.get(contract.META_TARGET)]
        self._several = several
        self._target_layers: list[Optional[str]] = layers

        self._target_shapes: list[Optional[tuple[int, int, int]]] = [None] * count
        if contract.META_TARGET_SHAPE in meta:
            shapes = _parse_json_meta(meta, contract.META_TARGET_SHAPE, src)
            listed = shapes if several else [shapes]

            def is_shape(v: Any) -> bool:
                return isinstance(v, list) and len(v) == 3 and all(_is_int(d) and d > 0 for d in v)

            if not (isinstance(listed, list) and len(listed) == count and all(is_shape(v) for v in listed)):
                expected = f"a list of {count} [K, h, w]" if several else "[K, h, w]"
                raise ValueError(
                    f"{src}: metadata {contract.META_TARGET_SHAPE!r} must be {expected}, got {meta[contract.META_TARGET_SHAPE]!r}"
                )
            self._target_shapes = [tuple(int(d) for d in v) for v in listed]  # type: ignore[misc]

        order = [contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS]
        for i in range(count):
            order += [_layer_output(name, i, several) for name in per_layer]
        if several:
            order.append(contract.OUTPUT_HEATMAP)  # the fused heatmap
        self._outputs = tuple(n for n in order if n in present)
        required = list(_REQUIRED_OUTPUTS)
        for i in range(count):
            required += [_layer_output(n, i, several) for n in contract.STANDARD_OUTPUTS if n not in _REQUIRED_OUTPUTS]
        missing = [n for n in required if n not in present]
        if missing:
            raise ValueError(f"{src}: the model lacks the onnxcam outputs {missing}")
        raw = [_layer_output(n, i, several) for i in range(count) for n in contract.RAW_OUTPUTS]
        if any(n in present for n in raw) and not all(n in present for n in raw):
            raise ValueError(f"{src}: the model has only some of the raw outputs {raw}")
        self._fused = several and contract.OUTPUT_HEATMAP in present
        if contract.META_OUTPUTS in meta:
            listed_outputs = _parse_json_meta(meta, contract.META_OUTPUTS, src)
            if isinstance(listed_outputs, list):
                absent = [n for n in listed_outputs if isinstance(n, str) and n not in present]
                if absent:
                    raise ValueError(f"{src}: metadata {contract.META_OUTPUTS!r} lists outputs the model lacks: {absent}")

    def _read_top_k(self, meta: dict[str, str], target_input: Any) -> None:
        """k of a top-k model (``onnxcam.top_k``, else the static k of ``onnxcam_target`` [N, k]), or None."""
        src = self._source
        shape = target_input.shape if isinstance(target_input.shape, list) else None
        top_k: Optional[int] = None
        if contract.META_TOP_K in meta:
            value = meta[contract.META_TOP_K]
            try:
                top_k = int(value)
            except ValueError:
                top_k = None
            if top_k is None or not 1 <= top_k <= self._num_classes:
                raise ValueError(
                    f"{src}: metadata {contract.META_TOP_K!r} must be an integer in [1, {self._num_classes}], got {value!r}"
                )
        elif shape is not None and len(shape) == 2:
            if not _is_int(shape[1]):
                raise ValueError(
                    f"{src}: input {contract.INPUT_TARGET!r} is [N, k] with unknown k ({shape[1]!r}) and there is "
                    f"no {contract.META_TOP_K} metadata"
                )
            top_k = int(shape[1])
        if shape is not None:
            rank = 1 if top_k is None else 2
            if len(shape) != rank or (top_k is not None and _is_int(shape[1]) and shape[1] != top_k):
                expected = "[N]" if top_k is None else f"[N, {top_k}]"
                raise ValueError(
                    f"{src}: input {contract.INPUT_TARGET!r} has shape {shape}; expected {expected}"
                    + ("" if top_k is None else f" (metadata {contract.META_TOP_K} = {top_k})")
                )
        self._top_k = top_k

    # ------------------------------------------------------------------ properties
    @property
    def input_name(self) -> str:
        """Name of the image input."""
        return self._input_name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return self._input_shape  # type: ignore[return-value]

    @property
    def target_layer(self) -> Optional[str]:
        """Name of the target tensor A (``onnxcam.target_layer`` metadata) of a single-layer model.

        None when the model explains several layers (see :attr:`target_layers`) or the metadata lacks it.
        """
        return None if self._several else self._target_layers[0]

    @property
    def target_layers(self) -> list[Optional[str]]:
        """Names of the target tensors, one per explained layer, in the order of the per-layer outputs
        (``_0``, ``_1``...) and of :attr:`Explanation.layers`; ``[target_layer]`` for a single layer."""
        return list(self._target_layers)

    @property
    def target_shapes(self) -> list[Optional[tuple[int, int, int]]]:
        """``(K, h, w)`` of each target layer (``onnxcam.target_shape`` metadata; None when absent)."""
        return list(self._target_shapes)

    @property
    def fused(self) -> bool:
        """Whether the model has a fused ``onnxcam_heatmap`` of several target layers."""
        return self._fused

    @property
    def top_k(self) -> Optional[int]:
        """k of a top-k model (``onnxcam.top_k``): the classes explained per image in one run; None
        for a model explaining one class per image."""
        return self._top_k

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self._num_classes

    @property
    def method(self) -> Optional[str]:
        """The CAM method (``onnxcam.method`` metadata): one of :data:`onnxcam.contract.METHODS`
        (``"liftcam"``, ``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``, ``"hirescam"``, ``"layercam"``),
        or None when the metadata lacks it. The outputs are the same for every method."""
        return self._metadata.get(contract.META_METHOD)

    @property
    def version(self) -> str:
        """onnxcam version that exported the model."""
        return self._metadata[contract.META_VERSION]

    @property
    def preprocessing(self) -> Optional[dict]:
        """The preprocessing dict from the metadata (a copy), or None when the exporter did not know it."""
        return None if self._preprocessing is None else dict(self._preprocessing)

    @property
    def class_names(self) -> Optional[list[str]]:
        """Class names from the ``onnxcam.class_names`` metadata, when present and of length C."""
        return None if self._class_names is None else list(self._class_names)

    @property
    def providers(self) -> list[str]:
        """The providers the session actually uses, in priority order."""
        return self._session.get_providers()

    @property
    def outputs(self) -> tuple[str, ...]:
        """The onnxcam outputs the model has, in contract order: logits, class, then each layer's
        coefficients, map, heatmap (and raw activations, multipliers), suffixed ``_0``, ``_1``... when
        there are several layers, then the fused heatmap when present."""
        return self._outputs

    @property
    def metadata(self) -> dict[str, str]:
        """All custom metadata of the model (a copy)."""
        return dict(self._metadata)

    @property
    def session_config(self) -> dict[str, str]:
        """The onnxruntime session config entries applied (the model's recommendations and yours)."""
        return dict(self._session_config)

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session."""
        return self._session

    def __repr__(self) -> str:
        return (
            f"Explainer({self._source!r}, input={self._input_name!r} {list(self._input_shape)}, "
            f"classes={self._num_classes}, method={self.method!r}, "
            + (f"target_layer={self.target_layer!r}" if not self._several else f"target_layers={self._target_layers!r}")
            + ("" if self._top_k is None else f", top_k={self._top_k}")
            + f", providers={self.providers})"
        )

    # ------------------------------------------------------------------ validation
    def _check_batch(self, batch: Any) -> np.ndarray:
        c, h, w = self._input_shape
        if not isinstance(batch, np.ndarray):
            raise ValueError(
                f"batch must be a numpy float32 array [N, {c}, {h}, {w}], got {type(batch).__name__}"
                + ("; convert a torch tensor with tensor.numpy()" if hasattr(batch, "numpy") else "")
            )
        if batch.ndim == 3:
            raise ValueError(
                f"expected a batch [N, {c}, {h}, {w}], got a single image of shape {tuple(batch.shape)}; "
                "add the batch axis with batch[None] (np.expand_dims(batch, 0))"
            )
        if batch.ndim != 4:
            raise ValueError(
                f"expected a 4-D batch [N, {c}, {h}, {w}], got {batch.ndim}-D shape {tuple(batch.shape)}"
            )
        if batch.shape[0] == 0:
            raise ValueError(f"empty batch: shape {tuple(batch.shape)} has N=0 images")
        if tuple(batch.shape[1:]) != (c, h, w):
            hint = ""
            if tuple(batch.shape[1:]) == (h, w, c):
                hint = "; it looks like NHWC: use batch.transpose(0, 3, 1, 2)"
            raise ValueError(
                f"expected images of shape [C, H, W] = [{c}, {h}, {w}], got {list(batch.shape[1:])} "
                f"(batch shape {tuple(batch.shape)}){hint}"
            )
        if batch.dtype == np.float64:
            batch = batch.astype(np.float32)
        elif batch.dtype != np.float32:
            raise ValueError(
                f"batch must be float32 (or float64, converted), got {batch.dtype}; preprocess the images "
                "(onnxcam.runtime.preprocess) or convert with batch.astype(np.float32)"
            )
        finite = np.isfinite(batch).reshape(batch.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            raise ValueError(f"batch contains NaN or Inf values in image(s) at index {bad[:10]}")
        return np.ascontiguousarray(batch, dtype=self._input_dtype)

    def _check_target(self, target: Any, n: int) -> np.ndarray:
        """``onnxcam_target`` for a batch of ``n``: int64 ``[n]``, or ``[n, k]`` for a top-k model."""
        k = self._top_k
        if target is None:
            return np.full(n if k is None else (n, k), -1, np.int64)
        if isinstance(target, (bool, np.bool_)):
            raise ValueError(f"target must be an int class index, got {target!r}")
        topk_forms = (
            f"a top-k model (k={k}) explains {k} classes per image: pass target=None (the {k} best classes), "
            f"a list of {k} classes applied to every image, or an int array [N, k]; a negative entry at rank r "
            "means the r-th highest-scoring class"
        )
        if _is_int(target):
            if k is None:
                t = np.full(n, int(target), np.int64)
            elif int(target) < 0:
                t = np.full((n, k), -1, np.int64)
            else:
                raise ValueError(f"target={int(target)}: {topk_forms}")
        else:
            try:
                arr = np.asarray(target)
            except ValueError as exc:  # ragged nested lists
                raise ValueError(f"target is not a rectangular array of class indices: {exc}") from None
            if arr.ndim == 0:
                if k is None:
                    raise ValueError(f"target must be None, an int or an int array [N], got {target!r}")
                raise ValueError(f"target={target!r}: {topk_forms}")
            if k is None:
                if arr.shape != (n,):
                    raise ValueError(
                        f"target must have shape [N] = ({n},) for a batch of {n}, got shape {tuple(arr.shape)}"
                        + ("; the model explains one class per image (it is not a top-k model)" if arr.ndim == 2 and arr.shape[0] == n else "")
                    )
            elif arr.shape not in ((k,), (n, k)):
                raise ValueError(
                    f"target must have shape [k] = ({k},) or [N, k] = ({n}, {k}) for a batch of {n} with this "
                    f"top-k model, got shape {tuple(arr.shape)}; {topk_forms}"
                )
            if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"target must hold integer class indices, got dtype {arr.dtype}")
            t = arr.astype(np.int64)
            if k is not None and t.ndim == 1:
                t = np.repeat(t[None, :], n, axis=0)
        too_big = np.argwhere(t >= self._num_classes)
        if too_big.size:
            where = tuple(int(v) for v in too_big[0])
            at = f"image index {where[0]}" + ("" if k is None else f", rank {where[1]}")
            raise ValueError(
                f"target class {int(t[where])} ({at}) is out of range [0, {self._num_classes}); "
                "use a negative value for the predicted class"
            )
        return np.ascontiguousarray(t)

    def _check_outputs(self, outputs: Optional[Iterable[str]]) -> list[str]:
        if outputs is None:
            return list(self._outputs)
        if isinstance(outputs, str):
            outputs = [outputs]
        count = len(self._target_layers)
        layer_names = [name for name, _ in _LAYER_OUTPUTS]
        valid = [*_REQUIRED_OUTPUTS, *contract.STANDARD_OUTPUTS[len(_REQUIRED_OUTPUTS):], *contract.RAW_OUTPUTS]
        if self._several:
            valid += [f"{name}_{i}" for i in range(count) for name in layer_names]
        wanted = set(_REQUIRED_OUTPUTS)
        for name in outputs:
            if not isinstance(name, str) or name not in valid:
                raise ValueError(f"unknown output {name!r}; valid outputs are {valid}")
            if name in self._outputs:
                wanted.add(name)
                continue
            if self._several and name in layer_names:  # shorthand: that output of every layer
                every = [f"{name}_{i}" for i in range(count)]
                if all(e in self._outputs for e in every):
                    wanted.update(every)
                    continue
            raise ValueError(
                f"the model has no output {name!r} (it has {list(self._outputs)}); raw outputs need a "
                "model exported with raw=True (onnxcam export --raw)"
            )
        return [n for n in self._outputs if n in wanted]

    def _assemble(self, values: dict[str, np.ndarray]) -> Explanation:
        """An :class:`Explanation` from fetched outputs (by name)."""
        layers = tuple(
            LayerExplanation(
                name=layer,
                **{f: values.get(_layer_output(out, i, self._several)) for out, f in _LAYER_OUTPUTS},
            )
            for i, layer in enumerate(self._target_layers)
        )
        return Explanation(
            logits=values[contract.OUTPUT_LOGITS],
            classes=values[contract.OUTPUT_CLASS],
            heatmaps=values.get(contract.OUTPUT_HEATMAP) if self._fused else None,
            layers=layers,
            fused=self._fused,
        )

    # ------------------------------------------------------------------ running
    def explain(
        self,
        batch: np.ndarray,
        target: Union[None, int, Sequence[int], np.ndarray] = None,
        outputs: Optional[Iterable[str]] = None,
    ) -> Explanation:
        """Explain a preprocessed batch with one ``session.run``.

        Args:
            batch: float32 ``[N, C, H, W]`` matching :attr:`input_shape` (a single ``[C, H, W]`` image
                is refused: add the batch axis). float64 is accepted and converted to float32; other
                dtypes are refused. NaN/Inf are refused.
            target: the class to explain: None (the predicted class, ``argmax`` of the logits, for
                every image), an int (the same class for every image) or an int array ``[N]``; a
                negative value means "the predicted class" for that image. Must be ``< C``.
                For a top-k model (:attr:`top_k` = k): None (the k highest-scoring classes), a list
                of k classes applied to every image, or an int array ``[N, k]``; a negative entry at
                rank ``r`` means the r-th highest-scoring class of that image (a negative int is
                accepted as "all predicted"; a non-negative int is refused).
            outputs: contract output names to fetch (``onnxcam.contract.OUTPUT_*``, or per-layer names
                such as ``"onnxcam_map_1"`` for a model with several layers). None (default): every
                onnxcam output the model has (:attr:`outputs`), raw ones included. With several
                layers an unsuffixed per-layer name the model lacks (``"onnxcam_coefficients"``, or
                ``"onnxcam_heatmap"`` without a fused heatmap) selects that output of every layer;
                ``"onnxcam_heatmap"`` of a model with a fused heatmap is the fused heatmap alone. The
                logits and the class are always fetched; the other fields of the result are None
                when not fetched.

        Returns:
            An :class:`Explanation` (with the ``k`` axis for a top-k model, one entry of
            :attr:`Explanation.layers` per target layer). On CUDA the inputs are bound from host
            memory and only the requested outputs are bound (IOBinding); on CPU
            ``session.run(requested, feeds)``.

        Raises:
            ValueError: wrong type/rank/shape/dtype, NaN/Inf, empty batch, bad target shape or a
                class out of ``[0, C)``, unknown or absent output names.
        """
        x = self._check_batch(batch)
        t = self._check_target(target, x.shape[0])
        names = self._check_outputs(outputs)
        feeds = {self._input_name: x, contract.INPUT_TARGET: t}
        if self._switchable:
            feeds[contract.INPUT_EXPLAIN] = np.array(True)
        if self._use_iobinding:
            binding = self._session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in names:
                binding.bind_output(name)
            self._session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self._session.run(names, feeds)
        return self._assemble(dict(zip(names, values)))

    @property
    def switchable(self) -> bool:
        """Whether the model has the ``onnxcam_explain`` switch (exported with ``switchable=True``):
        then :meth:`predict` runs the forward pass alone."""
        return self._switchable

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The explained scores ``onnxcam_logits`` float32 ``[N, C]``, without an explanation.

        On a switchable export (:attr:`switchable`) this feeds ``onnxcam_explain = False`` and costs
        the plain forward pass; on any other export onnxruntime still runs the whole graph (it runs
        every node whatever is fetched), so it costs as much as :meth:`explain`.

        Raises:
            ValueError: as :meth:`explain` for a bad batch.
        """
        x = self._check_batch(batch)
        feeds = {self._input_name: x, contract.INPUT_TARGET: self._check_target(None, x.shape[0])}
        if self._switchable:
            feeds[contract.INPUT_EXPLAIN] = np.array(False)
        (logits,) = self._session.run([contract.OUTPUT_LOGITS], feeds)
        return logits

    def preprocess(
        self, images: Sequence[np.ndarray], preprocessing: Optional[dict] = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Preprocess RGB uint8 images for this model (see :func:`onnxcam.runtime.preprocess`).

        ``preprocessing`` overrides the model's metadata (needed when the exporter did not record it).
        """
        pre = self._preprocessing if preprocessing is None else validate_preprocessing(preprocessing)
        if pre is None:
            raise ValueError(
                f"{self._source} has no {contract.META_PREPROCESSING} metadata; pass preprocessing= "
                f"(a dict, or one of onnxcam.contract.PREPROCESSING_PRESETS: {list(contract.PREPROCESSING_PRESETS)})"
            )
        c, h, w = self._input_shape
        if color_channels(pre) != c:
            raise ValueError(
                f"preprocessing color {pre['color']!r} gives {color_channels(pre)} channel(s) but the "
                f"model expects {c}"
            )
        return preprocess(images, pre, (h, w))

    def explain_images(
        self,
        images: Sequence[Union[str, "os.PathLike[str]", np.ndarray]],
        target: Union[None, int, Sequence[int], np.ndarray] = None,
        batch_size: int = 16,
        outputs: Optional[Iterable[str]] = None,
        preprocessing: Optional[dict] = None,
    ) -> tuple[Explanation, list[np.ndarray]]:
        """Load, preprocess and explain images, ``batch_size`` at a time (one session run per chunk).

        Args:
            images: file paths and/or RGB uint8 ``[H, W, 3]`` arrays (a single path or array is
                accepted too).
            target: as in :meth:`explain`, with an array of length ``len(images)`` (``[len(images), k]``
                or a list of k classes for a top-k model).
            batch_size: images per session run (>= 1).
            outputs: as in :meth:`explain`.
            preprocessing: override of the model's preprocessing metadata.

        Returns:
            ``(explanation, display)``: one :class:`Explanation` for all the images (in order) and the
            RGB uint8 images the model saw, for :func:`onnxcam.runtime.overlay`.

        Raises:
            ValueError: an unreadable image (named), bad ``batch_size``/``target``, or any error of
                :meth:`explain`.
        """
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]  # type: ignore[list-item]
        items = list(images)
        if not items:
            raise ValueError("no images given")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        targets = self._check_target(target, len(items))
        parts: list[Explanation] = []
        display: list[np.ndarray] = []
        for start in range(0, len(items), int(batch_size)):
            chunk = items[start : start + int(batch_size)]
            loaded = [item if isinstance(item, np.ndarray) else load_image(item) for item in chunk]
            x, shown = self.preprocess(loaded, preprocessing)
            parts.append(self.explain(x, targets[start : start + len(chunk)], outputs))
            display.extend(shown)
        return Explanation.concatenate(parts), display
