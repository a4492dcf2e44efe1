"""scripts/evaluate.py: top-1/top-5 error, per-class accuracy and the confusion matrix of a checkpoint
on its run's validation split, checked against the network's predictions computed here."""

import csv
import json
import os

import numpy as np
import pytest

from test_predict import expected_probabilities, load_script, run  # noqa: F401  (run: the tiny run fixture)

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")
pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def evaluate():
    return load_script("evaluate")


def val_subset(checkpoint):
    """The run's validation images and labels, as the recipe's --val-subset chose them."""
    from nbcnn.checkpoint import read_checkpoint
    from nbcnn.data import embedded_mnist, stratified_subset
    _, val = embedded_mnist()
    n = read_checkpoint(str(checkpoint))["progress"]["args"]["val_subset"]
    return val.subset(stratified_subset(val.labels, n))


def test_errors_per_class_accuracy_and_confusion_match_the_networks_predictions(evaluate, run, tmp_path, capsys):
    checkpoint, _, _ = run
    assert evaluate.main(["--checkpoint", str(checkpoint), "--json", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    val = val_subset(checkpoint)
    probs = np.stack([expected_probabilities(checkpoint, img[:, :, 0]) for img in val.images])
    predicted = probs.argmax(axis=1)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert result["images"] == len(val) and result["unreadable"] == 0
    assert result["top1_err"] == pytest.approx(np.mean(predicted != val.labels))
    assert result["top5_err"] == pytest.approx(np.mean(~(top5 == val.labels[:, None]).any(axis=1)))
    for c in range(10):
        assert result["per_class_accuracy"][str(c)] == pytest.approx(np.mean(predicted[val.labels == c] == c))
    with open(tmp_path / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted"] + [str(c) for c in range(10)]
    for t in range(10):
        assert [int(v) for v in rows[t + 1][1:]] == [int(np.sum((val.labels == t) & (predicted == p))) for p in range(10)]
    with open(tmp_path / "confusion.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_text_output_and_a_missing_dataset(evaluate, run, tmp_path, capsys):
    checkpoint, _, _ = run
    assert evaluate.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("20 validation images (0 unreadable, skipped): top-1 error ") and "top-5 error" in out
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "nowhere")
