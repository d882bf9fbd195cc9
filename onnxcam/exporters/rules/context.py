"""What a backward rule sees: its node, the builder, reference values and static facts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxcam.exporters.builder import GraphBuilder
from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.graph import GraphIndex, Head
from onnxcam.exporters.reference import ReferencePass

#: captum's threshold below which the Rescale rule falls back to the gradient.
RESCALE_EPS = {np.dtype(np.float32): 1e-10, np.dtype(np.float64): 1e-10, np.dtype(np.float16): 1e-3}


#: Sweep modes: DeepLIFT (Rescale / max-pool / Shapley-product rules) or the plain gradient.
DEEPLIFT = "deeplift"
GRADIENT = "gradient"


@dataclass(frozen=True)
class ChannelMultiplier:
    """The multiplier at the input ``x`` [B,K,h,w] of a spatial pooling ``y = mean_ij x``
    (GlobalAveragePool, ReduceMean over axes 2, 3) or ``y = Σ_ij x`` (ReduceSum): ``m = g / (h·w)``
    (``m = g`` for the sum), the same at every position, where ``g`` [B,K,1,1] is the multiplier of ``y``.

    Then ``Σ_ij x ⊙ m = g ⊙ y`` either way: the channel sums of the contributions are one [B,K,1,1]
    product with the pooled output the forward already computed (no [B,K,h,w] product, no reduction).
    """

    incoming: str  #: ``g`` [B,K,1,1]
    scaled: str  #: ``m`` [B,K,1,1] (= ``mean_ij`` of the multiplier at ``x``)
    pooled: str  #: ``y`` [B,K,1,1], the forward's pooled output in the sweep's batch and dtype


@dataclass
class SweepState:
    """Shared by every rule of one sweep.

    ``mode`` selects DeepLIFT multipliers or plain gradients (Grad-CAM family). ``tile`` > 1 runs the
    sweep for several classes per image at once: the sweep's batch is ``N·tile`` (image-major), and
    :meth:`runtime` gives rules the forward tensors repeated to match.
    """

    builder: GraphBuilder
    index: GraphIndex
    head: Head
    reference: ReferencePass
    mode: str = DEEPLIFT
    tile: int = 1
    #: multiplier tensors known to be one-hot rows (the seed) -> their class indices [B]
    one_hot: dict[str, str] = field(default_factory=dict)
    #: multiplier tensors that are a [B,K,1,1] tensor broadcast over space (a global average pool's
    #: input) -> what the CAM tail needs to use them without the broadcast
    spatially_constant: dict[str, "ChannelMultiplier"] = field(default_factory=dict)
    _ref_names: dict[str, str] = field(default_factory=dict)
    _tiled: dict[str, str] = field(default_factory=dict)

    def source_dtype(self, tensor: str) -> np.dtype:
        if tensor in self.index.constants:
            return self.index.constants[tensor].dtype
        return self.reference.value(tensor).dtype

    def compute_dtype(self, tensor: str) -> np.dtype:
        """The sweep runs float16 models' multipliers in float32 (no fp16 kernels needed, no fp16 cancellation)."""
        dtype = self.source_dtype(tensor)
        return np.dtype(np.float32) if dtype == np.float16 else dtype

    def runtime(self, tensor: str) -> str:
        """The forward tensor as the sweep sees it: in the compute dtype, and repeated ``tile`` times per
        image if it varies."""
        key = tensor
        if key in self._tiled:
            return self._tiled[key]
        b = self.builder
        name = tensor
        if self.source_dtype(tensor) == np.float16:
            name = b.op("Cast", [name], "to_float32", to=onnx.TensorProto.FLOAT)
        if self.tile > 1 and tensor in self.head.varying:
            rest = list(self.reference.value(tensor).shape[1:])
            expanded = b.op("Expand", [b.unsqueeze(name, [1]), b.ints([1, self.tile] + [1] * len(rest), "tile_shape")], "tiled")
            name = b.op("Reshape", [expanded, b.ints([-1, *rest], "tiled_shape")], "tiled_flat")
        self._tiled[key] = name
        return name

    def reference_initializer(self, tensor: str) -> str:
        """Name of an initializer holding the reference value of ``tensor`` (created once)."""
        if tensor not in self._ref_names:
            value = self.reference.value(tensor).astype(self.compute_dtype(tensor))
            self._ref_names[tensor] = self.builder.const(value, f"ref/{tensor}")
        return self._ref_names[tensor]


@dataclass
class RuleContext:
    """The node being swept backwards, with accessors for everything its rule may need."""

    node: onnx.NodeProto
    state: SweepState

    @property
    def b(self) -> GraphBuilder:
        return self.state.builder

    @property
    def label(self) -> str:
        return f"node {self.node.name or '(unnamed)'!r} ({self.node.op_type})"

    def error(self, message: str) -> ExportError:
        return ExportError(f"{self.label}: {message}")

    # -- attributes & inputs ---------------------------------------------------------------------
    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def input(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def one_hot_classes(self, multiplier: str | None) -> str | None:
        """Class indices [B] when ``multiplier`` is the one-hot seed (rules may then gather, not multiply)."""
        return self.state.one_hot.get(multiplier) if multiplier else None

    def value(self, name: str) -> str:
        """Runtime tensor for the forward tensor ``name`` (use this, not the bare name, in emitted nodes)."""
        return self.state.runtime(name)

    @property
    def gradient_mode(self) -> bool:
        return self.state.mode == GRADIENT

    def is_varying(self, i: int) -> bool:
        name = self.input(i)
        return bool(name) and name in self.state.head.varying

    def static(self, i: int, what: str) -> np.ndarray | None:
        """Value of input ``i`` when known at export (constant, or batch-independent); None if absent."""
        name = self.input(i)
        if not name:
            return None
        if name in self.state.index.constants:
            return self.state.index.constants[name]
        value = self.state.reference.static(name)
        if value is None:
            raise self.error(f"{what} (input {name!r}) must be known at export time, but it varies with the input")
        return value

    # -- shapes and references -------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of a head tensor at batch size 1."""
        if name in self.state.index.constants:
            return tuple(self.state.index.constants[name].shape)
        return tuple(self.state.reference.value(name).shape)

    def reshape_as(self, x: str, like: str, hint: str | None = None) -> str:
        """``x`` reshaped to the shape of head tensor ``like`` (in the sweep's batch).

        A constant target shape ``[-1, *rest]`` where only ``like``'s leading dimension varies with the
        batch (one Reshape node); otherwise the runtime shape (Shape → Reshape).
        """
        shape = self.state.reference.leading_batch_shape(like)
        if shape is None:
            return self.b.reshape_like(x, self.value(like), hint)
        return self.b.op("Reshape", [x, self.b.ints(shape, "batch_shape")], hint)

    def dtype(self, name: str) -> np.dtype:
        """The dtype the sweep computes ``name``'s multipliers in (float32 for float16 tensors)."""
        return self.state.compute_dtype(name)

    def source_dtype(self, name: str) -> np.dtype:
        """The tensor's dtype in the model (decides thresholds such as eps)."""
        return self.state.source_dtype(name)

    def ref(self, name: str) -> str:
        """Initializer holding the reference value ``z'`` of tensor ``name``."""
        return self.state.reference_initializer(name)

    def ref_value(self, name: str) -> np.ndarray:
        return self.state.reference.value(name)

    def eps(self, name: str) -> float:
        return RESCALE_EPS.get(self.source_dtype(name), 1e-10)

    def const(self, value, hint: str, like: str | None = None) -> str:
        """A constant in the dtype of tensor ``like`` (default: the node's first input)."""
        dtype = self.dtype(like or self.node.input[0])
        return self.b.const(np.asarray(value, dtype=dtype), hint)
