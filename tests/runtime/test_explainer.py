"""Explainer on the hand-built tiny model, checked against a float64 numpy recomputation."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam import contract
from onnxcam.runtime import Explainer, Explanation

FIELDS = ("logits", "classes", "coefficients", "maps", "heatmaps")


def assert_matches_reference(expl: Explanation, ref: dict, fields=FIELDS) -> None:
    np.testing.assert_array_equal(expl.classes, ref["classes"])
    assert expl.classes.dtype == np.int64
    for name in fields:
        got = getattr(expl, name)
        if name == "classes":
            continue
        assert got.dtype == np.float32, name
        assert got.shape == ref[name].shape, name
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(got, ref[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)


# ---------------------------------------------------------------------------- properties
def test_properties(explainer, tiny):
    assert explainer.input_name == "input"
    assert explainer.input_shape == (3, tiny.H, tiny.W)
    assert explainer.target_layer == "A"
    assert explainer.num_classes == tiny.NUM_CLASSES
    assert explainer.method == "liftcam"
    assert explainer.version == "0.1.0"
    assert explainer.providers == ["CPUExecutionProvider"]
    assert explainer.outputs == contract.STANDARD_OUTPUTS
    assert explainer.preprocessing["resize"] == "exact"
    assert explainer.preprocessing["mean"] == tiny.PREPROCESSING["mean"]
    assert explainer.metadata[contract.META_TARGET_SHAPE] == "[4, 8, 8]"
    assert explainer.class_names is None
    assert "tiny.cam.onnx" in repr(explainer)


def test_class_names_metadata(tiny_named_model_path, tiny):
    e = Explainer(tiny_named_model_path, device="cpu")
    assert e.class_names == tiny.CLASS_NAMES


def test_from_bytes(tiny_model_path, tiny, rng, tiny_weights):
    with open(tiny_model_path, "rb") as f:
        e = Explainer(f.read(), device="cpu")
    x = tiny.random_batch(rng, 3)
    assert_matches_reference(e.explain(x), tiny.reference(tiny_weights, x))


# ---------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("n", [1, 2, 7])
def test_explain_matches_numpy(explainer, tiny, tiny_weights, rng, n):
    x = tiny.random_batch(rng, n)
    expl = explainer.explain(x)
    ref = tiny.reference(tiny_weights, x)
    assert len(expl) == n
    assert_matches_reference(expl, ref)
    assert expl.activations is None and expl.multipliers is None
    # heatmap contract: per-image min-max to [0, 1]
    assert np.allclose(expl.heatmaps.min(axis=(1, 2)), 0.0, atol=1e-6)
    assert np.allclose(expl.heatmaps.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_predictions_vary(explainer, tiny, rng):
    """The fixture is only a meaningful test if different images get different classes."""
    expl = explainer.explain(tiny.random_batch(rng, 16))
    assert len(set(expl.classes.tolist())) >= 2


def test_completeness_of_coefficients(explainer, tiny, tiny_weights, rng):
    """sum_k phi_k = y_c(A) - y_c(0): for the GAP+Gemm head, y_c(0) is the bias b_c."""
    x = tiny.random_batch(rng, 5)
    expl = explainer.explain(x)
    y_c = expl.logits[np.arange(5), expl.classes]
    np.testing.assert_allclose(expl.coefficients.sum(axis=1), y_c - tiny_weights.fc_b[expl.classes], rtol=1e-4, atol=1e-5)


def test_zero_map_gives_zero_heatmap(explainer, tiny, tiny_weights):
    # zero input: A = ReLU(conv bias) everywhere; for a class with sum_k W[c,k] A_k < 0 the map is all
    # zeros, and a constant map must give a heatmap of zeros (not NaN from 0/0)
    score = tiny_weights.fc_w.astype(np.float64) @ np.maximum(tiny_weights.conv_b, 0.0)
    negative = np.flatnonzero(score < 0)
    assert negative.size
    expl = explainer.explain(np.zeros((2, 3, tiny.H, tiny.W), np.float32), target=int(negative[0]))
    assert np.all(expl.maps == 0.0)
    assert np.all(expl.heatmaps == 0.0)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_explicit_int_target(explainer, tiny, tiny_weights, rng, n):
    x = tiny.random_batch(rng, n)
    for c in range(tiny.NUM_CLASSES):
        expl = explainer.explain(x, target=c)
        assert expl.classes.tolist() == [c] * n
        assert_matches_reference(expl, tiny.reference(tiny_weights, x, target=c))


def test_array_target_with_negative_means_predicted(explainer, tiny, tiny_weights, rng):
    x = tiny.random_batch(rng, 7)
    target = np.array([0, -1, 4, -5, 2, 3, -1], np.int64)
    expl = explainer.explain(x, target=target)
    predicted = tiny.reference(tiny_weights, x)["classes"]
    expected = np.where(target < 0, predicted, target)
    np.testing.assert_array_equal(expl.classes, expected)
    assert_matches_reference(expl, tiny.reference(tiny_weights, x, target=target))
    # lists and other integer dtypes are accepted
    expl2 = explainer.explain(x, target=target.astype(np.int32).tolist())
    np.testing.assert_array_equal(expl2.classes, expected)
    expl3 = explainer.explain(x, target=np.int16(3))
    assert expl3.classes.tolist() == [3] * 7


def test_float64_batch_is_converted(explainer, tiny, tiny_weights, rng):
    x = tiny.random_batch(rng, 2)
    a = explainer.explain(x.astype(np.float64))
    b = explainer.explain(x)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.heatmaps, b.heatmaps)


def test_non_contiguous_batch(explainer, tiny, tiny_weights, rng):
    x = tiny.random_batch(rng, 4)
    view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, F-ish strides
    assert not view.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(explainer.explain(view).logits, explainer.explain(x).logits)


# ---------------------------------------------------------------------------- outputs selection
def test_outputs_subset(explainer, tiny, tiny_weights, rng):
    x = tiny.random_batch(rng, 3)
    expl = explainer.explain(x, outputs=[contract.OUTPUT_HEATMAP])
    assert expl.coefficients is None and expl.maps is None
    assert expl.logits is not None and expl.classes is not None  # always fetched
    ref = tiny.reference(tiny_weights, x)
    assert_matches_reference(expl, ref, fields=("logits", "heatmaps"))
    expl = explainer.explain(x, outputs=contract.OUTPUT_COEFFICIENTS)  # a single name is fine
    assert expl.heatmaps is None and expl.coefficients is not None


def test_raw_outputs(tiny_raw_model_path, tiny, tiny_weights, rng):
    e = Explainer(tiny_raw_model_path, device="cpu")
    assert e.outputs == contract.STANDARD_OUTPUTS + contract.RAW_OUTPUTS
    x = tiny.random_batch(rng, 2)
    ref = tiny.reference(tiny_weights, x)
    expl = e.explain(x)  # default: everything the model has
    assert_matches_reference(expl, ref, fields=FIELDS + ("activations", "multipliers"))
    # LIFT-CAM: phi_k = sum_ij A * m
    np.testing.assert_allclose(
        (expl.activations * expl.multipliers).sum(axis=(2, 3)), expl.coefficients, rtol=1e-4, atol=1e-6
    )
    lean = e.explain(x, outputs=contract.STANDARD_OUTPUTS)
    assert lean.activations is None and lean.multipliers is None


def test_unknown_or_absent_outputs(explainer):
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"unknown output 'logits'; valid outputs are"):
        explainer.explain(x, outputs=["logits"])
    with pytest.raises(ValueError, match=r"no output 'onnxcam_activations'.*raw=True"):
        explainer.explain(x, outputs=[contract.OUTPUT_ACTIVATIONS])


class _SpySession:
    """Wraps an InferenceSession and records how it is called."""

    def __init__(self, session):
        self._s = session
        self.runs: list = []
        self.bound_outputs: list = []

    def run(self, names, feeds, *a, **k):
        self.runs.append(("run", list(names)))
        return self._s.run(names, feeds, *a, **k)

    def io_binding(self):
        binding = self._s.io_binding()
        spy = self

        class B:
            def bind_cpu_input(self, name, value):
                binding.bind_cpu_input(name, value)

            def bind_output(self, name, *a, **k):
                spy.bound_outputs.append(name)
                binding.bind_output(name, *a, **k)

            def copy_outputs_to_cpu(self):
                return binding.copy_outputs_to_cpu()

        self._binding = binding
        return B()

    def run_with_iobinding(self, binding, *a, **k):
        self.runs.append(("iobinding", list(self.bound_outputs)))
        return self._s.run_with_iobinding(self._binding, *a, **k)

    def __getattr__(self, name):
        return getattr(self._s, name)


def test_one_session_run_per_call(tiny_model_path, tiny, rng):
    e = Explainer(tiny_model_path, device="cpu")
    spy = _SpySession(e._session)
    e._session = spy
    e.explain(tiny.random_batch(rng, 7), outputs=[contract.OUTPUT_HEATMAP])
    assert spy.runs == [("run", [contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS, contract.OUTPUT_HEATMAP])]


def test_iobinding_path_binds_only_requested(tiny_model_path, tiny, tiny_weights, rng):
    """The CUDA code path (IOBinding), exercised on the CPU provider."""
    e = Explainer(tiny_model_path, device="cpu")
    e._use_iobinding = True
    spy = _SpySession(e._session)
    e._session = spy
    x = tiny.random_batch(rng, 7)
    expl = e.explain(x, target=[1, -1, 2, -1, 0, 4, 3], outputs=[contract.OUTPUT_MAP])
    assert spy.runs == [("iobinding", [contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS, contract.OUTPUT_MAP])]
    assert expl.heatmaps is None and expl.coefficients is None
    ref = tiny.reference(tiny_weights, x, target=np.array([1, -1, 2, -1, 0, 4, 3]))
    assert_matches_reference(expl, ref, fields=("logits", "maps"))
    full = e.explain(x)
    assert_matches_reference(full, tiny.reference(tiny_weights, x))


# ---------------------------------------------------------------------------- batch validation
def test_single_image_refused(explainer):
    with pytest.raises(ValueError, match=r"single image of shape \(3, 16, 16\); add the batch axis"):
        explainer.explain(np.zeros((3, 16, 16), np.float32))


@pytest.mark.parametrize("shape", [(16, 16), (1, 1, 3, 16, 16), (48,)])
def test_wrong_rank(explainer, shape):
    with pytest.raises(ValueError, match=rf"expected a 4-D batch \[N, 3, 16, 16\], got {len(shape)}-D"):
        explainer.explain(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 15, 16), (2, 3, 16, 32)])
def test_wrong_chw(explainer, shape):
    with pytest.raises(ValueError, match=r"expected images of shape \[C, H, W\] = \[3, 16, 16\], got"):
        explainer.explain(np.zeros(shape, np.float32))


def test_nhwc_hint(explainer):
    with pytest.raises(ValueError, match=r"looks like NHWC: use batch.transpose\(0, 3, 1, 2\)"):
        explainer.explain(np.zeros((2, 16, 16, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.int64])
def test_wrong_dtype(explainer, dtype):
    with pytest.raises(ValueError, match=rf"must be float32 \(or float64, converted\), got {np.dtype(dtype)}.*astype\(np.float32\)"):
        explainer.explain(np.zeros((1, 3, 16, 16), dtype))


def test_not_an_array(explainer):
    with pytest.raises(ValueError, match=r"must be a numpy float32 array \[N, 3, 16, 16\], got list"):
        explainer.explain([[0.0]])


def test_empty_batch(explainer):
    with pytest.raises(ValueError, match=r"empty batch.*N=0"):
        explainer.explain(np.zeros((0, 3, 16, 16), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_names_the_image(explainer, bad):
    x = np.zeros((4, 3, 16, 16), np.float32)
    x[2, 1, 5, 5] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf values in image\(s\) at index \[2\]"):
        explainer.explain(x)


# ---------------------------------------------------------------------------- target validation
def test_target_shape_mismatch(explainer):
    x = np.zeros((3, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"target must have shape \[N\] = \(3,\) for a batch of 3, got shape \(2,\)"):
        explainer.explain(x, target=[1, 2])
    with pytest.raises(ValueError, match=r"got shape \(3, 1\)"):
        explainer.explain(x, target=np.zeros((3, 1), np.int64))


def test_target_out_of_range(explainer):
    x = np.zeros((3, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"target class 5 \(image index 0\) is out of range \[0, 5\)"):
        explainer.explain(x, target=5)
    with pytest.raises(ValueError, match=r"target class 9 \(image index 2\) is out of range \[0, 5\)"):
        explainer.explain(x, target=[0, -1, 9])


def test_target_wrong_dtype(explainer):
    x = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"target must hold integer class indices, got dtype float64"):
        explainer.explain(x, target=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"target must be an int class index, got True"):
        explainer.explain(x, target=True)


# ---------------------------------------------------------------------------- loading
def test_not_an_onnxcam_model(plain_model_path):
    with pytest.raises(ValueError, match=r"plain.onnx is not an onnxcam-exported model \(no onnxcam.version metadata\); export it with `onnxcam export`"):
        Explainer(plain_model_path, device="cpu")


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such model file: .*nope.onnx"):
        Explainer(tmp_path / "nope.onnx", device="cpu")


def test_corrupt_model_file(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match=r"onnxruntime cannot load .*bad.onnx"):
        Explainer(p, device="cpu")


def test_bad_device_and_threads(tiny_model_path):
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cuda' or 'cpu', got 'gpu'"):
        Explainer(tiny_model_path, device="gpu")
    with pytest.raises(ValueError, match=r"threads must be a positive integer"):
        Explainer(tiny_model_path, device="cpu", threads=0)


def test_metadata_bad_json(tmp_path, tiny, tiny_weights):
    import onnx

    model = tiny.build(tiny_weights)
    for prop in model.metadata_props:
        if prop.key == contract.META_INPUT_SHAPE:
            prop.value = "[3, 16"
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    with pytest.raises(ValueError, match=r"metadata 'onnxcam.input_shape' is not valid JSON"):
        Explainer(p, device="cpu")


def test_no_preprocessing_metadata(tmp_path, tiny, tiny_weights):
    import onnx

    p = tmp_path / "m.onnx"
    onnx.save(tiny.build(tiny_weights, preprocessing=None), str(p))
    e = Explainer(p, device="cpu")
    assert e.preprocessing is None
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"has no onnxcam.preprocessing metadata; pass preprocessing="):
        e.explain_images([img])
    expl, _ = e.explain_images([img], preprocessing=tiny.PREPROCESSING)
    assert len(expl) == 1


# ---------------------------------------------------------------------------- devices
def test_device_cpu_no_warning(tiny_model_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = Explainer(tiny_model_path, device="cpu")
    assert e.providers == ["CPUExecutionProvider"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime has CUDA here")
def test_device_auto_warns_without_cuda(tiny_model_path):
    with pytest.warns(RuntimeWarning, match=r"onnxruntime has no CUDAExecutionProvider \(install onnxcam\[gpu\]\); using CPU"):
        e = Explainer(tiny_model_path)
    assert e.providers == ["CPUExecutionProvider"]
    assert e._use_iobinding is False


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime has CUDA here")
def test_device_cuda_unavailable(tiny_model_path):
    with pytest.raises(ValueError, match=r"device='cuda' but onnxruntime has no CUDAExecutionProvider.*onnxcam\[gpu\]"):
        Explainer(tiny_model_path, device="cuda")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime has CUDA here")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_cuda_listed_but_not_initialised(tiny_model_path, monkeypatch):
    """onnxruntime falls back to CPU when the CUDA provider cannot start; we notice."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ValueError, match=r"device='cuda' but CUDAExecutionProvider is installed but could not be initialised"):
        Explainer(tiny_model_path, device="cuda")
    with pytest.warns(RuntimeWarning, match=r"could not be initialised.*using CPU"):
        e = Explainer(tiny_model_path, device="auto")
    assert e.providers == ["CPUExecutionProvider"]


def test_providers_override(tiny_model_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = Explainer(tiny_model_path, device="cuda", providers=["CPUExecutionProvider"])
    assert e.providers == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="providers must not be empty"):
        Explainer(tiny_model_path, providers=[])


# ---------------------------------------------------------------------------- explain_images
@pytest.mark.parametrize("batch_size", [1, 2, 7, 16])
def test_explain_images_chunks(tiny_model_path, tiny, tiny_weights, rng, batch_size):
    """Same result for any batch size, one session run per chunk, matching the numpy pipeline."""
    import cv2

    images = [rng.integers(0, 256, (int(rng.integers(10, 40)), int(rng.integers(10, 40)), 3), dtype=np.uint8) for _ in range(7)]
    e = Explainer(tiny_model_path, device="cpu")
    spy = _SpySession(e._session)
    e._session = spy
    expl, display = e.explain_images(images, batch_size=batch_size)
    assert len(spy.runs) == -(-7 // batch_size)
    assert len(expl) == 7 and len(display) == 7
    # independent preprocessing: cv2 bilinear to 16x16, (x/255 - mean)/std, NCHW
    mean = np.array(tiny.PREPROCESSING["mean"])
    std = np.array(tiny.PREPROCESSING["std"])
    resized = [cv2.resize(im, (tiny.W, tiny.H), interpolation=cv2.INTER_LINEAR) for im in images]
    x = np.stack([(r / 255.0 - mean) / std for r in resized]).transpose(0, 3, 1, 2)
    for d, r in zip(display, resized):
        np.testing.assert_array_equal(d, r)
    assert_matches_reference(expl, tiny.reference(tiny_weights, x))


def test_explain_images_targets_and_paths(tiny_model_path, tiny, tiny_weights, rng, tmp_path):
    import cv2

    paths = []
    for i in range(5):
        im = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), im[:, :, ::-1])  # stored as BGR
        paths.append(p)
    e = Explainer(tiny_model_path, device="cpu")
    target = np.array([4, -1, 3, 2, -1])
    expl, display = e.explain_images(paths, target=target, batch_size=2)
    whole, _ = e.explain_images([np.asarray(d) for d in display], target=target, batch_size=5)
    np.testing.assert_array_equal(expl.classes[[0, 2, 3]], [4, 3, 2])
    np.testing.assert_array_equal(expl.classes, whole.classes)
    np.testing.assert_allclose(expl.heatmaps, whole.heatmaps, atol=1e-6)
    # a single path is accepted
    one, _ = e.explain_images(paths[0], target=4)
    np.testing.assert_allclose(one.logits, expl.logits[:1], rtol=1e-6)


def test_explain_images_errors(explainer, tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        explainer.explain_images([np.zeros((4, 4, 3), np.uint8)], batch_size=0)
    with pytest.raises(ValueError, match="no images given"):
        explainer.explain_images([])
    with pytest.raises(ValueError, match=r"target must have shape \[N\] = \(2,\)"):
        explainer.explain_images([np.zeros((4, 4, 3), np.uint8)] * 2, target=[1, 2, 3])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*broken.jpg"):
        explainer.explain_images([np.zeros((4, 4, 3), np.uint8), bad])
