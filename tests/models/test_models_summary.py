"""`python -m cxrjax.models summary`: the per-layer table, parameter and FLOP totals."""

import json

import pytest

from cxrjax import models
from cxrjax.models.__main__ import main
from cxrjax.models.summary import ModelSummary, layer_rows

# LeNet-5 at 32x32x1, 3 classes: multiply-adds per image, by hand.
LENET_MACS = 28 * 28 * 6 * 5 * 5 * 1 + 10 * 10 * 16 * 5 * 5 * 6 + 400 * 120 + 120 * 84 + 84 * 3


def test_summary_json_schema_and_values(capsys):
    assert main(["summary", "lenet5", "--num-classes", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"model", "input_shape", "params", "forward_flops", "train_step_flops"}
    assert record["model"] == "lenet5" and record["input_shape"] == [32, 32, 1]
    assert record["params"] == 61_111
    # XLA counts 2 FLOPs per multiply-add, plus bias / ReLU / pooling element-wise work.
    assert 2 * LENET_MACS <= record["forward_flops"] <= 1.2 * 2 * LENET_MACS
    # A training step is forward + backward (~2x forward) + update: between 2x and 4x.
    assert 2 * record["forward_flops"] < record["train_step_flops"] < 4 * record["forward_flops"]


def test_summary_table_lists_every_layer():
    # The table part of the summary (the FLOP totals are checked on lenet5 above).
    result = ModelSummary(
        "s4_exp3",
        (16, 16, 1),
        2,
        layer_rows(models.create("s4_exp3", num_classes=2, channels=1), (2, 16, 16, 1)),
        params=0,
        forward_flops=0.0,
        train_step_flops=0.0,
    )
    out = result.to_text()
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    for layer in ["conv1", "bn1", "conv2", "conv3", "conv4", "head", "logits"]:
        assert layer in rows, out
    assert "bn2" not in rows  # Exp3: BatchNorm on the first layer only
    # 16 -k10p0-> 7 -k6p2-> 6 -pool-> 3 -k3p2-> 5 -pool-> 2 -k3p2-> 4 -pool-> 2
    assert rows["conv1"][2] == "7x7x16" and rows["conv1"][3] == f"{10 * 10 * 1 * 16 + 16:,}"
    assert rows["conv4"][2] == "4x4x128"
    assert rows["head"][3] == f"{2 * 2 * 128 * 128 + 128:,}"
    assert "total params:" in out and "GFLOPs per image" in out


def test_summary_text_output(capsys, monkeypatch):
    from cxrjax.models import summary

    # FLOPs are checked in the JSON test; here only the text, so skip compiling.
    monkeypatch.setattr(summary, "forward_and_train_flops", lambda model, shape: (2e9 * shape[0], 6e9 * shape[0]))
    assert main(["summary", "lenet5", "--image-size", "16", "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "logits" in out and "GFLOPs per image" in out
    # 16 -c5-> 12 -p-> 6 -c5-> 2 -p-> 1: dense1 sees 16 inputs
    assert f"{16 * 120 + 120:,}" in out
    assert "forward: 2.0000 GFLOPs per image" in out and "train step: 6.0000 GFLOPs per image" in out


def test_summary_rejects_too_small_inputs(capsys):
    assert main(["summary", "lenet5", "--image-size", "8"]) == 2
    assert "smallest valid input size is 16x16" in capsys.readouterr().err


def test_summary_unknown_model():
    with pytest.raises(SystemExit):
        main(["summary", "resnet18"])  # not registered (resnet50 is, as an ImageNet backbone)
