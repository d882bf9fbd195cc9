"""Run an onnxcam-exported model with onnxruntime: :class:`Explainer` and :class:`Explanation`.

Only the standard library, numpy, OpenCV, onnxruntime and :mod:`onnxcam.contract` are imported here
(never onnx or torch), so a serving environment needs nothing else.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

import numpy as np
import onnxruntime as ort

from onnxcam import contract
from onnxcam.runtime.images import color_channels, load_image, preprocess, validate_preprocessing

__all__ = ["DEFAULT_OUTPUTS", "META_CLASS_NAMES", "Explainer", "Explanation"]

#: Optional metadata key with the class names (JSON list of C strings). Not (yet) part of the
#: graph contract; read when present.
META_CLASS_NAMES = contract.META_CLASS_NAMES

#: Outputs fetched by :meth:`Explainer.explain` when ``outputs`` is not given (plus the raw ones when
#: the model has them).
DEFAULT_OUTPUTS = contract.STANDARD_OUTPUTS

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"

# Explanation field fed by each contract output.
_FIELD_OF_OUTPUT = {
    contract.OUTPUT_LOGITS: "logits",
    contract.OUTPUT_CLASS: "classes",
    contract.OUTPUT_COEFFICIENTS: "coefficients",
    contract.OUTPUT_MAP: "maps",
    contract.OUTPUT_HEATMAP: "heatmaps",
    contract.OUTPUT_ACTIVATIONS: "activations",
    contract.OUTPUT_MULTIPLIERS: "multipliers",
}
# Always fetched: an Explanation without the scores and the explained class makes no sense.
_REQUIRED_OUTPUTS = (contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS)

_ORT_FLOAT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(eq=False)
class Explanation:
    """The LIFT-CAM explanation of a batch of N images (arrays as returned by the model).

    Attributes:
        logits: float32 ``[N, C]``, the explained scores ``y`` (pre-softmax).
        classes: int64 ``[N]``, the class ``c`` explained for each image.
        coefficients: float32 ``[N, K]``, ``phi_k = sum_ij A_kij * m_kij`` (DeepLIFT contributions of
            the target-layer channels to ``y_c`` against a zero reference), or None if not fetched.
        maps: float32 ``[N, h, w]``, ``L = ReLU(sum_k phi_k A_k)``, or None if not fetched.
        heatmaps: float32 ``[N, H, W]``, ``L`` resized bilinear (half-pixel) to the input size and
            min-max normalised per image to [0, 1] (a constant map gives 0), or None if not fetched.
        activations: float32 ``[N, K, h, w]`` target-layer activations ``A`` (raw models only).
        multipliers: float32 ``[N, K, h, w]`` DeepLIFT multipliers ``dy_c/dA`` (raw models only).

    ``len(expl)`` is N; ``expl[i]`` is the same dataclass for image ``i`` alone (N = 1, arrays are
    views); ``expl[a:b]`` slices; iterating yields the per-image explanations.

    Example::

        >>> import numpy as np
        >>> e = Explanation(logits=np.array([[1.0, 3.0, 2.0]], np.float32), classes=np.array([1]))
        >>> e.top_k(2)[0].tolist()
        [[1, 2]]
        >>> round(float(e.probabilities()[0, 1]), 4)
        0.6652
    """

    logits: np.ndarray
    classes: np.ndarray
    coefficients: Optional[np.ndarray] = None
    maps: Optional[np.ndarray] = None
    heatmaps: Optional[np.ndarray] = None
    activations: Optional[np.ndarray] = None
    multipliers: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def __getitem__(self, index: Union[int, slice]) -> "Explanation":
        n = len(self)
        if isinstance(index, slice):
            sel = index
        elif isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"image index {i} out of range for an Explanation of {n} image(s)")
            i %= n
            sel = slice(i, i + 1)
        else:
            raise TypeError(f"Explanation indices must be int or slice, got {type(index).__name__}")
        return Explanation(
            **{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[sel]) for f in fields(self)}
        )

    def __iter__(self) -> Iterator["Explanation"]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        parts = [
            f"{f.name}={tuple(getattr(self, f.name).shape)}"
            for f in fields(self)
            if getattr(self, f.name) is not None
        ]
        return f"Explanation(N={len(self)}, " + ", ".join(parts) + ")"

    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``exp(y - max y) / sum exp(y - max y)`` per image (float32 ``[N, C]``).

        Computed in float64 after subtracting the per-image maximum, so it never overflows.
        """
        z = self.logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def top_k(self, k: int = 5, scores: str = "logits") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest-scoring classes per image.

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
        """Join explanations of consecutive batches into one (fields missing in any part become None)."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate (no explanations)")
        values: dict[str, Any] = {}
        for f in fields(cls):
            arrays = [getattr(p, f.name) for p in parts]
            values[f.name] = None if any(a is None for a in arrays) else np.concatenate(arrays, axis=0)
        if values["logits"] is None or values["classes"] is None:
            raise ValueError("every explanation must have logits and classes")
        return cls(**values)


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
    """

    def __init__(
        self,
        path_or_bytes: Union[str, "os.PathLike[str]", bytes],
        device: str = "auto",
        providers: Optional[Sequence[Any]] = None,
        threads: Optional[int] = None,
    ) -> None:
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            model: Union[str, bytes] = bytes(path_or_bytes)
            self._source = "<bytes>"
        else:
            model = os.fspath(path_or_bytes)
            self._source = model
            if not os.path.isfile(model):
                raise FileNotFoundError(f"no such model file: {model!r}")
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

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load {self._source}: {exc}") from exc

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
        extra = sorted(set(inputs) - {self._input_name, contract.INPUT_TARGET})
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

        self._outputs = tuple(
            n for n in (*contract.STANDARD_OUTPUTS, *contract.RAW_OUTPUTS) if n in outputs
        )
        missing = [n for n in contract.STANDARD_OUTPUTS if n not in outputs]
        if missing:
            raise ValueError(f"{src}: the model lacks the onnxcam outputs {missing}")

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
        """Name of the target tensor A (``onnxcam.target_layer`` metadata)."""
        return self._metadata.get(contract.META_TARGET)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self._num_classes

    @property
    def method(self) -> Optional[str]:
        """The CAM method (``"liftcam"``)."""
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
        """The onnxcam outputs the model has, in contract order."""
        return self._outputs

    @property
    def metadata(self) -> dict[str, str]:
        """All custom metadata of the model (a copy)."""
        return dict(self._metadata)

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session."""
        return self._session

    def __repr__(self) -> str:
        return (
            f"Explainer({self._source!r}, input={self._input_name!r} {list(self._input_shape)}, "
            f"classes={self._num_classes}, target_layer={self.target_layer!r}, providers={self.providers})"
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
        if target is None:
            return np.full(n, -1, np.int64)
        if isinstance(target, (bool, np.bool_)):
            raise ValueError(f"target must be an int class index, got {target!r}")
        if isinstance(target, (int, np.integer)):
            t = np.full(n, int(target), np.int64)
        else:
            arr = np.asarray(target)
            if arr.ndim == 0:
                raise ValueError(f"target must be None, an int or an int array [N], got {target!r}")
            if arr.shape != (n,):
                raise ValueError(
                    f"target must have shape [N] = ({n},) for a batch of {n}, got shape {tuple(arr.shape)}"
                )
            if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"target must hold integer class indices, got dtype {arr.dtype}")
            t = arr.astype(np.int64)
        too_big = np.flatnonzero(t >= self._num_classes)
        if too_big.size:
            i = int(too_big[0])
            raise ValueError(
                f"target class {int(t[i])} (image index {i}) is out of range [0, {self._num_classes}); "
                "use a negative value for the predicted class"
            )
        return t

    def _check_outputs(self, outputs: Optional[Iterable[str]]) -> list[str]:
        if outputs is None:
            return list(self._outputs)
        if isinstance(outputs, str):
            outputs = [outputs]
        requested = list(outputs)
        valid = (*contract.STANDARD_OUTPUTS, *contract.RAW_OUTPUTS)
        for name in requested:
            if name not in valid:
                raise ValueError(f"unknown output {name!r}; valid outputs are {list(valid)}")
            if name not in self._outputs:
                raise ValueError(
                    f"the model has no output {name!r} (it has {list(self._outputs)}); raw outputs need a "
                    "model exported with raw=True (onnxcam export --raw)"
                )
        wanted = set(requested) | set(_REQUIRED_OUTPUTS)
        return [n for n in self._outputs if n in wanted]

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
            outputs: contract output names to fetch (``onnxcam.contract.OUTPUT_*``). None (default):
                every onnxcam output the model has, i.e. :data:`DEFAULT_OUTPUTS` plus the raw
                activations/multipliers when the model was exported with ``raw=True``. The logits
                and the class are always fetched; the other fields of the result are None when not
                fetched.

        Returns:
            An :class:`Explanation`. On CUDA the inputs are bound from host memory and only the
            requested outputs are bound (IOBinding); on CPU ``session.run(requested, feeds)``.

        Raises:
            ValueError: wrong type/rank/shape/dtype, NaN/Inf, empty batch, bad target shape or a
                class out of ``[0, C)``, unknown or absent output names.
        """
        x = self._check_batch(batch)
        t = self._check_target(target, x.shape[0])
        names = self._check_outputs(outputs)
        feeds = {self._input_name: x, contract.INPUT_TARGET: t}
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
        return Explanation(**{_FIELD_OF_OUTPUT[n]: v for n, v in zip(names, values)})

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
            target: as in :meth:`explain`, with an array of length ``len(images)``.
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
