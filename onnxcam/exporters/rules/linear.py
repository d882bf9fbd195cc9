"""Backward rules of linear operators: the multiplier goes through the transposed linear map.

For ``y = L(x) + b`` with ``L`` linear in the varying input ``x`` (all other inputs constant), the
DeepLIFT multiplier is the ordinary gradient: ``m_x = Lᵀ g``. Biases take no multiplier.
Where a rule needs a shape it uses the static shape at batch 1; varying tensors keep the batch
axis first, so reshapes back to an input use that input's runtime shape.
"""

from __future__ import annotations

import numpy as np

from onnxcam.exporters.rules import Multipliers, register
from onnxcam.exporters.rules.context import ChannelMultiplier, RuleContext


def unbroadcast(ctx: RuleContext, g: str, inp: str, out: str) -> str:
    """Sum ``g`` (shaped like ``out``) over the axes NumPy broadcasting expanded ``inp`` along."""
    in_shape, out_shape = ctx.shape(inp), ctx.shape(out)
    if in_shape == out_shape:
        return g
    lead = len(out_shape) - len(in_shape)
    axes = list(range(lead)) + [
        lead + i for i, d in enumerate(in_shape) if d == 1 and out_shape[lead + i] != 1
    ]
    summed = ctx.b.reduce("ReduceSum", g, axes, keepdims=True, hint="unbroadcast") if axes else g
    return ctx.reshape_as(summed, inp)


def _only(ctx: RuleContext, varying_inputs: set[int]) -> None:
    extra = [i for i in range(len(ctx.node.input)) if ctx.is_varying(i) and i not in varying_inputs]
    if extra:
        names = ", ".join(repr(ctx.input(i)) for i in extra)
        raise ctx.error(f"input(s) {names} depend on the target tensor; this rule supports only a varying "
                        f"input {sorted(varying_inputs)} with the others constant")


@register("Identity", "Dropout")
def identity(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = x``: ``m_x = g``. Dropout is the identity in inference (its mask output takes no multiplier)."""
    if ctx.node.op_type == "Dropout" and len(ctx.node.input) > 2 and ctx.input(2):
        training = ctx.static(2, "training_mode")
        if training is not None and bool(training):
            raise ctx.error("Dropout in training mode is not deterministic; export the model in eval mode")
    return [g[0]] + [None] * (len(ctx.node.input) - 1)


@register("Cast")
def cast(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Float-to-float cast: ``m_x = cast(g)`` back to the input dtype."""
    dtype = ctx.dtype(ctx.input(0))
    if dtype.kind != "f":
        raise ctx.error(f"Cast from {dtype} is not differentiable")
    from onnx import helper

    return [ctx.b.op("Cast", [g[0]], "cast_back", to=helper.np_dtype_to_tensor_dtype(dtype))]


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Pure reshapes: ``m_x = reshape(g, shape(x))``."""
    _only(ctx, {0})
    return [ctx.reshape_as(g[0], ctx.input(0), "reshape_back")] + [None] * (len(ctx.node.input) - 1)


@register("Transpose")
def transpose(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = transpose(x, p)``: ``m_x = transpose(g, p⁻¹)``."""
    rank = len(ctx.shape(ctx.input(0)))
    perm = ctx.attr("perm", list(reversed(range(rank))))
    return [ctx.b.op("Transpose", [g[0]], "transpose_back", perm=[int(i) for i in np.argsort(perm)])]


@register("Add", "Sub", "Sum")
def add(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = a ± b``: ``m_a = g``, ``m_b = ±g`` (summed over broadcast axes)."""
    out = ctx.node.output[0]
    result: Multipliers = []
    for i, name in enumerate(ctx.node.input):
        if not ctx.is_varying(i):
            result.append(None)
            continue
        gi = unbroadcast(ctx, g[0], name, out)
        if ctx.node.op_type == "Sub" and i == 1:
            gi = ctx.b.op("Neg", [gi], "neg")
        result.append(gi)
    return result


@register("Neg")
def neg(ctx: RuleContext, g: Multipliers) -> Multipliers:
    return [ctx.b.op("Neg", [g[0]], "neg")]


@register("Mul")
def mul(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = a·b``.

    One varying factor: ``m_a = g·b``. Two varying factors (e.g. squeeze-and-excitation gates): the
    Shapley rule of the two-factor product, ``m_a = g·(b + b')/2``, ``m_b = g·(a + a')/2``, which keeps
    completeness exact: ``m_a·Δa + m_b·Δb = g·Δ(ab)``. In gradient mode: ``m_a = g·b``, ``m_b = g·a``.
    """
    a, b = ctx.input(0), ctx.input(1)
    a_val, b_val = ctx.value(a), ctx.value(b)
    out = ctx.node.output[0]
    va, vb = ctx.is_varying(0), ctx.is_varying(1)
    if va and vb and not ctx.gradient_mode:
        half = ctx.const(0.5, "half", like=out)
        b_val = ctx.b.op("Mul", [ctx.b.op("Add", [b_val, ctx.ref(b)]), half], "shapley_b")
        a_val = ctx.b.op("Mul", [ctx.b.op("Add", [a_val, ctx.ref(a)]), half], "shapley_a")
    return [
        unbroadcast(ctx, ctx.b.op("Mul", [g[0], b_val], "mul_back"), a, out) if va else None,
        unbroadcast(ctx, ctx.b.op("Mul", [g[0], a_val], "mul_back"), b, out) if vb else None,
    ]


@register("Div")
def div(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = a / c`` with ``c`` constant: ``m_a = g / c``."""
    _only(ctx, {0})
    a, out = ctx.input(0), ctx.node.output[0]
    return [unbroadcast(ctx, ctx.b.op("Div", [g[0], ctx.value(ctx.input(1))], "div_back"), a, out), None]


@register("Gemm")
def gemm(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``Y = α·op(A)·op(B) + β·C``; with ``B`` constant ``m_A = α·g·op(B)ᵀ`` (transposed back if transA)."""
    _only(ctx, {0})
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    weight = ctx.value(ctx.input(1))
    classes = ctx.one_hot_classes(g[0])
    if classes is not None and not trans_a:
        # g = one_hot(c): g·op(B)ᵀ is row c of op(B)ᵀ — B[c, :] if transB else B[:, c]ᵀ.
        rows = _gather_rows(ctx, weight, classes, transposed=not trans_b)
        scaled = rows if alpha == 1.0 else ctx.b.op("Mul", [rows, ctx.const(alpha, "alpha")], "gemm_alpha")
        return [scaled] + [None] * (len(ctx.node.input) - 1)
    # (g·op(B)ᵀ)ᵀ = op(B)·gᵀ, with the weight as Gemm's *A* operand: onnxruntime prepacks constant
    # B operands, so Gemm(g, W) would keep a second packed copy of W (VGG16: +400 MB).
    transposed = ctx.b.op("Gemm", [weight, g[0]], "gemm_back", alpha=alpha, transA=trans_b, transB=1)
    grad = transposed if trans_a else ctx.b.op("Transpose", [transposed], "gemm_back_t", perm=[1, 0])
    return [grad] + [None] * (len(ctx.node.input) - 1)


@register("MatMul")
def matmul(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``Y = X·W`` with ``W`` a constant matrix: ``m_X = g·Wᵀ``."""
    _only(ctx, {0})
    weight = ctx.input(1)
    w_shape = ctx.shape(weight)
    if len(w_shape) != 2:
        raise ctx.error(f"MatMul by a constant of shape {list(w_shape)}: only 2-D constant right factors are supported")
    classes = ctx.one_hot_classes(g[0])
    if classes is not None and len(ctx.shape(ctx.input(0))) == 2:
        return [_gather_rows(ctx, ctx.value(weight), classes, transposed=True), None]  # g·Wᵀ = W[:, c]ᵀ
    if len(ctx.shape(ctx.input(0))) == 2:
        # (W·gᵀ)ᵀ: the weight stays the A operand (no transposed or prepacked copy of W).
        g_t = ctx.b.op("Transpose", [g[0]], "matmul_g_t", perm=[1, 0])
        return [ctx.b.op("Transpose", [ctx.b.op("MatMul", [ctx.value(weight), g_t], "matmul_back")], "matmul_back_t", perm=[1, 0]), None]
    w_t = ctx.b.op("Transpose", [ctx.value(weight)], "matmul_wT", perm=[1, 0])
    return [ctx.b.op("MatMul", [g[0], w_t], "matmul_back"), None]


def _gather_rows(ctx: RuleContext, weight: str, classes: str, transposed: bool) -> str:
    """``weight[c, :]`` (or ``weight[:, c]ᵀ`` when ``transposed``) for each class ``c`` of ``classes`` [B]."""
    if not transposed:
        return ctx.b.op("Gather", [weight, classes], "onehot_rows", axis=0)
    columns = ctx.b.op("Gather", [weight, classes], "onehot_columns", axis=1)
    return ctx.b.op("Transpose", [columns], "onehot_rows", perm=[1, 0])


def window_pads_begin(ctx: RuleContext, in_sp, out_sp, kernel, strides, dilations) -> list[int]:
    """Leading pads of a windowed op, resolving ``auto_pad`` against the static shapes."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    n = len(kernel)
    if auto_pad in ("NOTSET", ""):
        return list(ctx.attr("pads", [0] * (2 * n)))[:n]
    if auto_pad == "VALID":
        return [0] * n
    begins = []
    for i, o, k, s, d in zip(in_sp, out_sp, kernel, strides, dilations):
        total = max(0, (o - 1) * s + (k - 1) * d + 1 - i)
        begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


def transpose_window(ctx: RuleContext, g: str, weight: str, kernel, strides, dilations, pads_begin, group: int, in_sp, out_sp) -> str:
    """The transposed map of a (grouped) convolution: ``ConvTranspose`` sized back to ``in_sp`` exactly.

    ConvTranspose's output size is ``s·(o − 1) + op + (k − 1)·d + 1 − p_begin − p_end``; we choose
    ``p_end`` (or, where that would be negative, ``output_padding``) so it equals the forward input size.
    """
    pads_end, out_pad = [], []
    for i, o, k, s, d, pb in zip(in_sp, out_sp, kernel, strides, dilations, pads_begin):
        excess = s * (o - 1) + (k - 1) * d + 1 - pb - i
        pads_end.append(max(excess, 0))
        out_pad.append(max(-excess, 0))
    return ctx.b.op(
        "ConvTranspose", [g, weight], "conv_back",
        kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations),
        pads=list(pads_begin) + pads_end, output_padding=out_pad, group=group,
    )


def _window_geometry(ctx: RuleContext, kernel=None):
    x, y = ctx.input(0), ctx.node.output[0]
    in_sp, out_sp = ctx.shape(x)[2:], ctx.shape(y)[2:]
    kernel = list(kernel if kernel is not None else ctx.attr("kernel_shape"))
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    pads_begin = window_pads_begin(ctx, in_sp, out_sp, kernel, strides, dilations)
    return in_sp, out_sp, kernel, strides, dilations, pads_begin


@register("Conv")
def conv(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = conv(x, W) + b`` with constant ``W``: ``m_x = conv_transpose(g, W)`` (same groups, strides, pads)."""
    _only(ctx, {0})
    weight = ctx.input(1)
    kernel = ctx.attr("kernel_shape") or ctx.shape(weight)[2:]
    in_sp, out_sp, kernel, strides, dilations, pads_begin = _window_geometry(ctx, kernel)
    grad = transpose_window(ctx, g[0], ctx.value(weight), kernel, strides, dilations, pads_begin, int(ctx.attr("group", 1)), in_sp, out_sp)
    return [grad] + [None] * (len(ctx.node.input) - 1)


@register("AveragePool")
def average_pool(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Average pooling is a depthwise convolution with a ones kernel and a per-position divisor.

    ``y = D ⊙ conv_sum(x)`` where ``D`` (computed at export from the node's own attributes:
    padding, ``count_include_pad``, ``ceil_mode``) is ``avg_pool(1) / conv_sum(1)``; hence
    ``m_x = conv_transpose(D ⊙ g, ones)``.
    """
    x = ctx.input(0)
    in_sp, out_sp, kernel, strides, dilations, pads_begin = _window_geometry(ctx)
    channels = ctx.shape(x)[1]
    dtype = ctx.dtype(x)
    divisor = _average_pool_scale(ctx, channels, in_sp, out_sp, kernel, strides, dilations, pads_begin, dtype)
    scaled = ctx.b.op("Mul", [g[0], ctx.b.const(divisor, "avgpool_scale")], "avgpool_scaled")
    ones = ctx.b.const(np.ones((channels, 1, *kernel), dtype=dtype), "avgpool_ones")
    return [transpose_window(ctx, scaled, ones, kernel, strides, dilations, pads_begin, channels, in_sp, out_sp)]


def _average_pool_scale(ctx, channels, in_sp, out_sp, kernel, strides, dilations, pads_begin, dtype) -> np.ndarray:
    """``avg_pool(1) / window_count`` per output position, evaluated with onnxruntime on the node itself."""
    import onnx
    from onnx import helper

    from onnxcam.exporters.reference import _session

    ones = np.ones((1, 1, *in_sp), dtype=np.float32)
    node = onnx.NodeProto()
    node.CopyFrom(ctx.node)
    del node.input[:]
    del node.output[:]
    node.input.append("x")
    node.output.append("avg")
    # conv_sum over the true input only (zero padding); the end padding makes it as long as the pool's
    # output, including ceil_mode's extra windows.
    pads_end = [max(0, s * (o - 1) + (k - 1) * d + 1 - pb - i)
                for i, o, k, s, d, pb in zip(in_sp, out_sp, kernel, strides, dilations, pads_begin)]
    count = helper.make_node(
        "Conv", ["x", "w"], ["count"], kernel_shape=list(kernel), strides=list(strides),
        dilations=list(dilations), pads=list(pads_begin) + pads_end,
    )
    graph = helper.make_graph(
        [node, count], "avgpool_scale",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(ones.shape))],
        [onnx.ValueInfoProto(name="avg"), onnx.ValueInfoProto(name="count")],
        initializer=[onnx.numpy_helper.from_array(np.ones((1, 1, *kernel), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    avg, cnt = _session(model).run(None, {"x": ones})
    if cnt.shape != avg.shape:
        raise ctx.error(f"cannot derive the pooling divisor: window count {cnt.shape} vs output {avg.shape}")
    scale = np.divide(avg, cnt, out=np.zeros_like(avg), where=cnt > 0)
    return np.broadcast_to(scale, (1, channels, *out_sp)).astype(dtype)


@register("GlobalAveragePool")
def global_average_pool(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = mean_ij x``: ``m_x = expand(g / (h·w))``."""
    x = ctx.input(0)
    count = int(np.prod(ctx.shape(x)[2:]))
    scaled = ctx.b.op("Mul", [g[0], ctx.const(1.0 / count, "inv_count")], "gap_scaled")
    grad = ctx.b.op("Expand", [scaled, ctx.b.shape(ctx.value(x))], "gap_back")
    # Lets the CAM tail skip the expansion (the Expand is pruned when nothing else reads it).
    ctx.state.spatially_constant[grad] = ChannelMultiplier(g[0], scaled, ctx.value(ctx.node.output[0]))
    return [grad]


@register("ReduceMean", "ReduceSum")
def reduce_linear(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = Σ/mean over axes``: ``m_x = expand(g) (/ count)``; axes from the attribute or the input."""
    x = ctx.input(0)
    rank = len(ctx.shape(x))
    axes = ctx.attr("axes")
    if axes is None and len(ctx.node.input) > 1 and ctx.input(1):
        axes = ctx.static(1, "axes").tolist()
    if not axes:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return [g[0]] + [None] * (len(ctx.node.input) - 1)
        axes = list(range(rank))
    axes = sorted(int(a) % rank for a in axes)
    grad = g[0]
    if not int(ctx.attr("keepdims", 1)):
        grad = ctx.b.unsqueeze(grad, axes)
    incoming = grad  # g with y's reduced axes kept as 1
    if ctx.node.op_type == "ReduceMean":
        count = int(np.prod([ctx.shape(x)[a] for a in axes]))
        grad = ctx.b.op("Mul", [grad, ctx.const(1.0 / count, "inv_count")], "mean_scaled")
    back = ctx.b.op("Expand", [grad, ctx.b.shape(ctx.value(x))], "reduce_back")
    if rank == 4 and axes == [2, 3]:  # a spatial pooling written as a reduction (e.g. x.mean((2, 3)))
        pooled = ctx.value(ctx.node.output[0])
        if not int(ctx.attr("keepdims", 1)):
            pooled = ctx.b.unsqueeze(pooled, axes)
        ctx.state.spatially_constant[back] = ChannelMultiplier(incoming, grad, pooled)
    return [back] + [None] * (len(ctx.node.input) - 1)


@register("Concat")
def concat(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = concat(x₁…xₙ)``: each ``m_xᵢ`` is its slice of ``g``."""
    rank = len(ctx.shape(ctx.node.output[0]))
    axis = int(ctx.attr("axis")) % rank
    if axis == 0:
        raise ctx.error("Concat along the batch axis is not supported")
    result: Multipliers = []
    start = 0
    for i, name in enumerate(ctx.node.input):
        size = ctx.shape(name)[axis]
        result.append(ctx.b.slice(g[0], [start], [start + size], [axis], hint="concat_back") if ctx.is_varying(i) else None)
        start += size
    return result


@register("Split")
def split(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``(y₁…yₙ) = split(x)``: ``m_x = concat(m_y₁…m_yₙ)`` with zeros where an output takes none."""
    rank = len(ctx.shape(ctx.input(0)))
    axis = int(ctx.attr("axis", 0)) % rank
    if axis == 0:
        raise ctx.error("Split along the batch axis is not supported")
    parts = []
    for out, gi in zip(ctx.node.output, g):
        parts.append(gi if gi is not None else ctx.b.op("ConstantOfShape", [ctx.b.shape(ctx.value(out))], "split_zeros",
                                                        value=_zero_tensor(ctx.dtype(out))))
    return [ctx.b.op("Concat", parts, "split_back", axis=axis)] + [None] * (len(ctx.node.input) - 1)


def _zero_tensor(dtype: np.dtype):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, dtype=dtype))


@register("Slice")
def slice_(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = x[start:end:step]``: ``m_x`` scatters ``g`` back to the sliced positions, zeros elsewhere.

    Step 1 is a zero Pad; a step ``s > 1`` first interleaves ``s − 1`` zeros after every element
    (unsqueeze, pad, reshape), then pads.
    """
    _only(ctx, {0})
    x = ctx.input(0)
    shape = ctx.shape(x)
    rank = len(shape)
    starts = ctx.static(1, "starts").tolist()
    ends = ctx.static(2, "ends").tolist()
    axes = ctx.static(3, "axes")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes.tolist()]
    steps = ctx.static(4, "steps")
    steps = [1] * len(starts) if steps is None else steps.tolist()
    grad = g[0]
    current = list(ctx.shape(ctx.node.output[0]))
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise ctx.error(f"Slice with step {step} along axis {axis} is not supported (only positive steps)")
        first, stop, _ = slice(int(start), int(end), int(step)).indices(shape[axis])
        count = current[axis]
        if axis == 0 and (count != shape[0] or first != 0):
            raise ctx.error("Slice along the batch axis is not supported")
        if axis == 0:
            continue
        if step > 1 and count > 0:
            grad = ctx.b.unsqueeze(grad, [axis + 1])
            pads = [0] * (2 * (rank + 1))
            pads[rank + 1 + axis + 1] = step - 1
            grad = ctx.b.pad(grad, pads, "slice_interleave")
            merged = current[:axis] + [count * step] + current[axis + 1:]
            grad = ctx.b.op("Reshape", [grad, ctx.b.ints([0] + merged[1:], "shape")], "slice_merge")
            length = count * step
        else:
            length = count
        before, after = first, shape[axis] - first - length
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = before, after  # `after` < 0 crops the interleaved tail
        grad = ctx.b.pad(grad, pads, "slice_back")
        current[axis] = shape[axis]
    return [grad] + [None] * (len(ctx.node.input) - 1)


@register("Pad")
def pad(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Constant-mode Pad: ``m_x`` is ``g`` with the padding cut off (and zeros where Pad cropped)."""
    _only(ctx, {0})
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise ctx.error(f"Pad mode {mode!r} is not supported (only 'constant')")
    rank = len(ctx.shape(ctx.input(0)))
    pads = ctx.static(1, "pads").tolist()
    axes = ctx.static(3, "axes")
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
    full = [0] * (2 * rank)
    for k, axis in enumerate(axes):
        full[axis], full[rank + axis] = int(pads[k]), int(pads[len(axes) + k])
    if full[0] or full[rank]:
        raise ctx.error("Pad along the batch axis is not supported")
    return [ctx.b.pad(g[0], [-p for p in full], "pad_back")] + [None] * (len(ctx.node.input) - 1)


@register("BatchNormalization")
def batch_norm(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Inference BatchNormalization ``y = γ (x − μ)/√(σ² + ε) + β``: ``m_x = g · γ/√(σ² + ε)``."""
    _only(ctx, {0})
    if int(ctx.attr("training_mode", 0)):
        raise ctx.error("BatchNormalization in training mode; export the model in eval mode")
    scale = ctx.static(1, "scale")
    var = ctx.static(4, "running variance")
    factor = scale / np.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
    rank = len(ctx.shape(ctx.input(0)))
    factor = factor.reshape((1, -1) + (1,) * (rank - 2)).astype(ctx.dtype(ctx.input(0)))
    return [ctx.b.op("Mul", [g[0], ctx.b.const(factor, "bn_scale")], "bn_back")] + [None] * 4


@register("Expand")
def expand(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = expand(x, shape)``: ``m_x = Σ`` of ``g`` over the broadcast axes."""
    _only(ctx, {0})
    return [unbroadcast(ctx, g[0], ctx.input(0), ctx.node.output[0]), None]


@register("Gather")
def gather(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = take(x, idx, axis)`` with constant ``idx`` (scalar or 1-D): ``m_x = g · P`` along ``axis``,
    ``P[l, d] = [idx_l = d]`` (repeated indices sum)."""
    _only(ctx, {0})
    x = ctx.input(0)
    shape = ctx.shape(x)
    rank = len(shape)
    axis = int(ctx.attr("axis", 0)) % rank
    if axis == 0:
        raise ctx.error("Gather along the batch axis is not supported")
    indices = ctx.static(1, "indices")
    if indices.ndim > 1:
        raise ctx.error(f"Gather with {indices.ndim}-D indices is not supported (scalar or 1-D only)")
    grad = g[0]
    flat = np.atleast_1d(indices).astype(np.int64) % shape[axis]
    if indices.ndim == 0:
        grad = ctx.b.unsqueeze(grad, [axis])
    selector = np.zeros((flat.size, shape[axis]), dtype=ctx.dtype(x))
    np.add.at(selector, (np.arange(flat.size), flat), 1.0)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = ctx.b.op("Transpose", [grad], "gather_move", perm=perm)
    scattered = ctx.b.op("MatMul", [moved, ctx.b.const(selector, "gather_selector")], "gather_back")
    return [ctx.b.op("Transpose", [scattered], "gather_restore", perm=[int(i) for i in np.argsort(perm)]), None]


@register("ConvTranspose")
def conv_transpose(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """``y = conv_transpose(x, W) + b`` with constant ``W``: ``m_x = conv(g, W)`` (same groups, strides,
    dilations, pads); output-padding rows, which no input reaches, are cropped first."""
    _only(ctx, {0})
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", ""):
        raise ctx.error(f"ConvTranspose with auto_pad={auto_pad} is not supported; use explicit pads")
    weight = ctx.input(1)
    kernel = list(ctx.attr("kernel_shape") or ctx.shape(weight)[2:])
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    pads = list(ctx.attr("pads", [0] * (2 * n))) if auto_pad != "VALID" else [0] * (2 * n)
    in_sp, out_sp = ctx.shape(ctx.input(0))[2:], ctx.shape(ctx.node.output[0])[2:]
    grad = g[0]
    pads_end = []
    crop = []
    for i, o, k, s, d, pb in zip(in_sp, out_sp, kernel, strides, dilations, pads[:n]):
        # Conv output size floor((o + pb + pe - (k-1)d - 1)/s) + 1 must be i.
        pe = s * (i - 1) + (k - 1) * d + 1 - o - pb
        pads_end.append(max(pe, 0))
        crop.append(max(-pe, 0))
    if any(crop):
        rank = 2 + n
        grad = ctx.b.pad(grad, [0] * rank + [0, 0] + [-c for c in crop], "convT_crop")
    conv = ctx.b.op("Conv", [grad, ctx.value(weight)], "convT_back", kernel_shape=kernel, strides=strides,
                    dilations=dilations, pads=list(pads[:n]) + pads_end, group=int(ctx.attr("group", 1)))
    return [conv] + [None] * (len(ctx.node.input) - 1)
