"""``onnxcam explain`` (onnxcam/cli_explain.py) on the tiny model, and end to end on real photos."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam import cli_explain
from onnxcam.cli_explain import Progress, atomic_write, expand_inputs, main, output_names


def write_image(path: Path, rng: np.random.Generator, hw=(20, 24)) -> np.ndarray:
    """Write a random RGB image (lossless PNG, or JPEG/BMP by suffix) and return the RGB array."""
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return rgb


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main(["explain", *map(str, argv)])
    return rc, capsys.readouterr().err


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def expected_outputs(*names: str) -> list[str]:
    return sorted(f for n in names for f in (f"{n}.json", f"{n}_heatmap.png", f"{n}_overlay.png"))


@pytest.fixture
def images(tmp_path, rng) -> dict[str, Path]:
    d = tmp_path / "imgs"
    paths = {
        "b": d / "b.png",
        "a": d / "a.PNG",  # upper-case extension
        "c": d / "c.bmp",
    }
    for i, p in enumerate(paths.values()):
        write_image(p, rng, hw=(16 + 3 * i, 30 - 2 * i))
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    write_image(d / "sub" / "deep.png", rng)  # not recursive
    return paths


def reference_for_file(tiny, tiny_weights, path: Path, target=None):
    """Independent pipeline: Pillow decode, cv2 bilinear resize, float64 normalisation, numpy LIFT-CAM."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    shown = cv2.resize(rgb, (tiny.W, tiny.H), interpolation=cv2.INTER_LINEAR)
    mean, std = np.array(tiny.PREPROCESSING["mean"]), np.array(tiny.PREPROCESSING["std"])
    x = ((shown / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    ref = tiny.reference(tiny_weights, x, target=target)
    return ref, shown


# ---------------------------------------------------------------------------- happy path
@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_outputs_match_numpy(tmp_path, capsys, tiny_model_path, tiny, tiny_weights, images, batch_size):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_model_path, images["b"].parent, "--out", out, "--device", "cpu",
                      "--batch-size", batch_size, "--alpha", 0.4)
    assert rc == 0, err
    assert listing(out) == expected_outputs("a", "b", "c")  # no temp files, nothing else
    assert "explained 3 of 3 image(s)" in err
    assert "\r" not in err  # stderr is not a TTY: no progress bar, only the summary
    for name in ("a", "b", "c"):
        ref, shown = reference_for_file(tiny, tiny_weights, images[name])
        record = json.loads((out / f"{name}.json").read_text())
        logits = ref["logits"][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        order = np.argsort(-logits, kind="stable")[:5]
        assert record["input"] == str(images[name])
        assert record["explained_class"]["index"] == int(ref["classes"][0])
        assert [t["index"] for t in record["top5"]] == order.tolist()
        np.testing.assert_allclose([t["logit"] for t in record["top5"]], logits[order], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([t["probability"] for t in record["top5"]], probs[order], rtol=1e-4, atol=1e-6)
        assert all(t["name"] is None for t in record["top5"])
        assert record["requested_class"] is None
        assert record["model"] == tiny_model_path
        assert record["target_layer"] == "A" and record["method"] == "liftcam"
        assert record["providers"] == ["CPUExecutionProvider"]
        assert record["onnxcam_version"] and record["onnxruntime_version"]
        assert record["heatmap"] == f"{name}_heatmap.png" and record["overlay"] == f"{name}_overlay.png"

        heat_u8 = np.floor(ref["heatmaps"][0] * 255).astype(np.uint8)
        colour_bgr = cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET)
        heat_png = cv2.imread(str(out / f"{name}_heatmap.png"), cv2.IMREAD_UNCHANGED)
        assert heat_png.shape == (tiny.H, tiny.W, 3)
        # float32 vs float64 may move a value across a 1/255 boundary: allow a few pixels
        assert (np.abs(heat_png.astype(int) - colour_bgr).max(axis=2) > 0).mean() < 0.02
        over_png = cv2.imread(str(out / f"{name}_overlay.png"), cv2.IMREAD_UNCHANGED)
        expected = np.rint(0.6 * shown[:, :, ::-1].astype(np.float64) + 0.4 * colour_bgr)
        assert (np.abs(over_png.astype(int) - expected).max(axis=2) > 1).mean() < 0.02


def test_one_run_per_batch(tmp_path, capsys, monkeypatch, tiny_model_path, rng):
    from onnxcam.runtime.explainer import Explainer

    sizes: list[int] = []
    original = Explainer.explain

    def spy(self, batch, *a, **k):
        sizes.append(batch.shape[0])
        return original(self, batch, *a, **k)

    monkeypatch.setattr(Explainer, "explain", spy)
    for i in range(7):
        write_image(tmp_path / "in" / f"im{i}.png", rng)
    rc, err = run_cli(capsys, tiny_model_path, tmp_path / "in", "--out", tmp_path / "out", "--device", "cpu", "--batch-size", 3)
    assert rc == 0, err
    assert sizes == [3, 3, 1]


def test_batch_size_does_not_change_results(tmp_path, capsys, tiny_model_path, rng):
    for i in range(7):
        write_image(tmp_path / "in" / f"im{i}.png", rng, hw=(10 + i, 40 - i))
    records = {}
    for bs in (1, 7):
        out = tmp_path / f"out{bs}"
        assert run_cli(capsys, tiny_model_path, tmp_path / "in", "--out", out, "--device", "cpu", "--batch-size", bs)[0] == 0
        records[bs] = {f: json.loads((out / f).read_text()) for f in os.listdir(out) if f.endswith(".json")}
    assert records[1].keys() == records[7].keys() and len(records[1]) == 7
    for f in records[1]:
        a, b = records[1][f], records[7][f]
        assert [t["index"] for t in a["top5"]] == [t["index"] for t in b["top5"]]
        np.testing.assert_allclose([t["logit"] for t in a["top5"]], [t["logit"] for t in b["top5"]], rtol=1e-5)


def test_explicit_class(tmp_path, capsys, tiny_model_path, tiny, tiny_weights, images):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_model_path, images["a"], images["c"], "--out", out, "--device", "cpu", "--class", 3)
    assert rc == 0, err
    for name in ("a", "c"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["explained_class"]["index"] == 3 and record["requested_class"] == 3
        ref, _ = reference_for_file(tiny, tiny_weights, images[name], target=3)
        np.testing.assert_allclose(record["explained_class"]["logit"], ref["logits"][0, 3], rtol=1e-4)
        heat_png = cv2.imread(str(out / f"{name}_heatmap.png"))
        expected = cv2.applyColorMap(np.floor(ref["heatmaps"][0] * 255).astype(np.uint8), cv2.COLORMAP_JET)
        assert (np.abs(heat_png.astype(int) - expected).max(axis=2) > 0).mean() < 0.02


def test_labels_file_and_metadata_names(tmp_path, capsys, tiny_model_path, tiny_named_model_path, tiny, images):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([f"class-{i}" for i in range(tiny.NUM_CLASSES)]))
    out = tmp_path / "out1"
    assert run_cli(capsys, tiny_model_path, images["a"], "--out", out, "--device", "cpu", "--labels", labels)[0] == 0
    record = json.loads((out / "a.json").read_text())
    assert all(t["name"] == f"class-{t['index']}" for t in record["top5"])
    assert record["explained_class"]["name"] == f"class-{record['explained_class']['index']}"
    out = tmp_path / "out2"
    assert run_cli(capsys, tiny_named_model_path, images["a"], "--out", out, "--device", "cpu")[0] == 0
    record = json.loads((out / "a.json").read_text())
    assert all(t["name"] == tiny.CLASS_NAMES[t["index"]] for t in record["top5"])


def test_via_onnxcam_cli_main(tmp_path, capsys, tiny_model_path, images):
    from onnxcam.cli import main as onnxcam_main

    out = tmp_path / "out"
    rc = onnxcam_main(["explain", tiny_model_path, str(images["b"]), "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert listing(out) == expected_outputs("b")


def test_device_auto_note_on_stderr(tmp_path, capsys, tiny_model_path, images):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    rc, err = run_cli(capsys, tiny_model_path, images["b"], "--out", tmp_path / "out")
    assert rc == 0
    assert "onnxcam explain: note: onnxruntime has no CUDAExecutionProvider (install onnxcam[gpu]); using CPU" in err


# ---------------------------------------------------------------------------- inputs and names
def test_expand_inputs(images, tmp_path):
    d = images["a"].parent
    files = expand_inputs([str(d), str(images["a"]), str(d / "notes.txt")])
    # directory: images only, sorted, not recursive; explicit files kept; duplicates dropped
    assert files == [str(d / "a.PNG"), str(d / "b.png"), str(d / "c.bmp"), str(d / "notes.txt")]
    with pytest.raises(cli_explain.UsageError, match=r"no such file or directory: '.*nope.png'"):
        expand_inputs([str(tmp_path / "nope.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli_explain.UsageError, match=r"no images .* in directory"):
        expand_inputs([str(tmp_path / "empty")])


def test_output_names_disambiguation():
    paths = ["x/cat.png", "y/cat.png", "x/dog.jpg", "z/cat.jpg", "cat_2.png", "CAT.bmp"]
    names = output_names(paths)
    # first 'cat' keeps its stem; later ones skip cat_2 (the natural stem of another input)
    assert names == ["cat", "cat_3", "dog", "cat_4", "cat_2", "CAT_5"]
    assert len({n.casefold() for n in names}) == len(names)
    assert output_names(paths) == names  # deterministic


def test_name_clashes_do_not_overwrite(tmp_path, capsys, tiny_model_path, rng):
    a = write_image(tmp_path / "one" / "cat.png", rng)
    b = write_image(tmp_path / "two" / "cat.png", rng, hw=(30, 18))
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_model_path, tmp_path / "one", tmp_path / "two", "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert listing(out) == expected_outputs("cat", "cat_2")
    assert json.loads((out / "cat.json").read_text())["input"] == str(tmp_path / "one" / "cat.png")
    assert json.loads((out / "cat_2.json").read_text())["input"] == str(tmp_path / "two" / "cat.png")
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------------------- overwrite, atomicity
def test_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys, tiny_model_path, images):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_overlay.png").write_bytes(b"keep me")
    (out / "c.json").write_text("{}")
    before = listing(out)
    rc, err = run_cli(capsys, tiny_model_path, images["b"].parent, "--out", out, "--device", "cpu")
    assert rc == 2
    assert "2 output file(s) already exist" in err
    assert "b_overlay.png" in err and "c.json" in err and "--overwrite" in err
    assert listing(out) == before
    assert (out / "b_overlay.png").read_bytes() == b"keep me"
    # a fresh --out directory is not even created when refusing
    rc, _ = run_cli(capsys, tiny_model_path, images["b"], "--out", tmp_path / "fresh", "--class", 99, "--device", "cpu")
    assert rc == 2 and not (tmp_path / "fresh").exists()


def test_refusal_lists_only_the_first_few(tmp_path, capsys, tiny_model_path, rng):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(4):
        write_image(tmp_path / "in" / f"im{i}.png", rng)
        for f in expected_outputs(f"im{i}"):
            (out / f).write_text("x")
    rc, err = run_cli(capsys, tiny_model_path, tmp_path / "in", "--out", out, "--device", "cpu")
    assert rc == 2 and "12 output file(s) already exist" in err and "and 7 more" in err


def test_overwrite_replaces(tmp_path, capsys, tiny_model_path, images):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_overlay.png").write_bytes(b"old")
    rc, err = run_cli(capsys, tiny_model_path, images["b"], "--out", out, "--device", "cpu", "--overwrite")
    assert rc == 0, err
    assert cv2.imread(str(out / "b_overlay.png")) is not None
    assert listing(out) == expected_outputs("b")


def test_atomic_write(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(str(target), b"first")
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(str(target), b"second")
    assert target.read_bytes() == b"first"  # untouched
    assert listing(tmp_path) == ["f.bin"]  # temp file removed


def test_write_failure_is_reported_and_cleaned(tmp_path, capsys, monkeypatch, tiny_model_path, images):
    real_replace = os.replace

    def flaky(src, dst):
        if str(dst).endswith("b_overlay.png"):
            raise OSError("no space left")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_model_path, images["a"], images["b"], "--out", out, "--device", "cpu")
    assert rc == 1
    assert "failed to write the outputs of" in err and "no space left" in err
    assert not any(f.endswith(".tmp") for f in listing(out))
    assert set(expected_outputs("a")) <= set(listing(out))
    assert "b.json" not in listing(out)


# ---------------------------------------------------------------------------- failures
def test_corrupt_image_is_skipped(tmp_path, capsys, tiny_model_path, images):
    d = images["a"].parent
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_model_path, d, "--out", out, "--device", "cpu", "--batch-size", 2)
    assert rc == 1
    assert "skipping" in err and "broken.jpg" in err
    assert "explained 3 of 4 image(s)" in err and "1 failed" in err
    assert listing(out) == expected_outputs("a", "b", "c")


def test_all_corrupt(tmp_path, capsys, tiny_model_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    rc, err = run_cli(capsys, tiny_model_path, tmp_path / "x.png", "--out", tmp_path / "out", "--device", "cpu")
    assert rc == 1 and "explained 0 of 1" in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--batch-size", "0"], r"--batch-size must be at least 1, got 0"),
        (["--alpha", "1.5"], r"--alpha must be in \[0, 1\], got 1.5"),
        (["--class", "5"], r"--class 5 is out of range \[0, 5\)"),
        (["--class", "-1"], r"--class -1 is out of range \[0, 5\)"),
        (["--threads", "0"], r"--threads must be at least 1"),
        (["--preprocessing", "imagenette"], r"--preprocessing 'imagenette' is neither a preset"),
        (["--preprocessing", "mnist"], r"preprocessing color 'GRAY' gives 1 channel\(s\) but the model expects 3"),
    ],
)
def test_usage_errors(tmp_path, capsys, tiny_model_path, images, extra, message):
    import re

    out = tmp_path / "out"
    rc, err = run_cli(capsys, tiny_model_path, images["a"], "--out", out, "--device", "cpu", *extra)
    assert rc == 2
    assert re.search(message, err), err
    assert err.startswith("onnxcam explain: error:")
    assert not out.exists()


def test_bad_model_paths(tmp_path, capsys, plain_model_path, images):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, tmp_path / "missing.cam.onnx", images["a"], "--out", out)
    assert rc == 2 and "no such model file" in err
    rc, err = run_cli(capsys, plain_model_path, images["a"], "--out", out, "--device", "cpu")
    assert rc == 2 and "is not an onnxcam-exported model" in err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    rc, err = run_cli(capsys, bad, images["a"], "--out", out, "--device", "cpu")
    assert rc == 2 and "onnxruntime cannot load" in err
    assert not out.exists()


def test_bad_inputs_and_out(tmp_path, capsys, tiny_model_path, images):
    rc, err = run_cli(capsys, tiny_model_path, tmp_path / "nope.png", "--out", tmp_path / "out", "--device", "cpu")
    assert rc == 2 and "no such file or directory" in err
    (tmp_path / "file").write_text("x")
    rc, err = run_cli(capsys, tiny_model_path, images["a"], "--out", tmp_path / "file", "--device", "cpu")
    assert rc == 2 and "exists and is not a directory" in err


def test_labels_errors(tmp_path, capsys, tiny_model_path, images):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(["a", "b"]))
    rc, err = run_cli(capsys, tiny_model_path, images["a"], "--out", tmp_path / "out", "--device", "cpu", "--labels", wrong)
    assert rc == 2 and "has 2 names but the model has 5 classes" in err
    broken = tmp_path / "broken.json"
    broken.write_text("[")
    rc, err = run_cli(capsys, tiny_model_path, images["a"], "--out", tmp_path / "out", "--device", "cpu", "--labels", broken)
    assert rc == 2 and "is not valid JSON" in err


def test_model_without_preprocessing(tmp_path, capsys, tiny, tiny_weights, images):
    import onnx

    model = tmp_path / "nopre.cam.onnx"
    onnx.save(tiny.build(tiny_weights, preprocessing=None), str(model))
    rc, err = run_cli(capsys, model, images["a"], "--out", tmp_path / "out", "--device", "cpu")
    assert rc == 2 and "has no onnxcam.preprocessing metadata; pass --preprocessing" in err
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps(tiny.PREPROCESSING))
    rc, err = run_cli(capsys, model, images["a"], "--out", tmp_path / "out", "--device", "cpu", "--preprocessing", pre)
    assert rc == 0, err
    rc, err = run_cli(capsys, model, images["a"], "--out", tmp_path / "out2", "--device", "cpu", "--preprocessing", "cifar10")
    assert rc == 0, err


def test_argparse_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "model.onnx"])  # no images, no --out
    assert info.value.code == 2


# ---------------------------------------------------------------------------- progress bar
class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_tty():
    stream = FakeTTY()
    p = Progress(4, stream, width=8)
    p.start()
    p.update(2)
    p.message("something happened")
    p.update(2)
    p.close()
    text = stream.getvalue()
    assert "\r" in text and "[####....] 2/4" in text and "[########] 4/4" in text
    assert "something happened\n" in text and text.endswith("\n")


def test_progress_silent_without_tty():
    stream = io.StringIO()
    p = Progress(3, stream)
    p.start()
    p.update(3)
    p.message("note")
    p.close()
    assert stream.getvalue() == "note\n"


# ---------------------------------------------------------------------------- real model, real photos
@pytest.fixture(scope="module")
def mobilenet_cam(shared_dir, tmp_path_factory) -> Path:
    onnxcam = pytest.importorskip("onnxcam")
    src = shared_dir / "models" / "mobilenetv2_imagenet_fp32.onnx"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    try:
        export = onnxcam.export
    except (AttributeError, ImportError) as exc:  # the exporter is optional for the runtime
        pytest.skip(f"onnxcam.export is not available: {exc}")
    path = tmp_path_factory.mktemp("real") / "mobilenetv2.cam.onnx"
    onnxcam.save(export(str(src), target=None, preprocessing="imagenet"), str(path))
    return path


def test_real_photos_end_to_end(tmp_path, capsys, shared_dir, mobilenet_cam):
    photos = shared_dir / "images" / "photos"
    labels = shared_dir / "images" / "imagenet_classes.json"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, mobilenet_cam, photos, corrupt, "--out", out, "--labels", labels, "--batch-size", 4, "--device", "cpu")
    assert rc == 1, err
    assert "corrupt.jpg" in err
    stems = sorted(p.stem for p in photos.iterdir() if p.suffix.lower() in cli_explain.IMAGE_EXTENSIONS)
    assert listing(out) == expected_outputs(*stems)
    names = json.loads(labels.read_text())
    finch = json.loads((out / "house_finch.json").read_text())
    assert finch["explained_class"]["index"] == names.index("house finch")
    assert finch["explained_class"]["name"] == "house finch"
    coffee = json.loads((out / "coffee.json").read_text())
    assert coffee["top5"][0]["name"] == "espresso"
    for stem in stems:
        heat = cv2.imread(str(out / f"{stem}_heatmap.png"))
        over = cv2.imread(str(out / f"{stem}_overlay.png"))
        assert heat.shape == over.shape == (224, 224, 3)

    # the heatmap PNG is the colourised heatmap of the runtime on the same preprocessing
    from onnxcam.runtime import Explainer, colorize

    explainer = Explainer(mobilenet_cam, device="cpu")
    expl, display = explainer.explain_images([photos / "house_finch.jpg"])
    np.testing.assert_array_equal(cv2.imread(str(out / "house_finch_heatmap.png")), colorize(expl.heatmaps[0], rgb=False))
    # the finch is in the middle of the crop, the heatmap peaks on it rather than at the border
    peak = np.unravel_index(np.argmax(expl.heatmaps[0]), expl.heatmaps[0].shape)
    assert 40 <= peak[0] <= 184 and 40 <= peak[1] <= 184
