"""Smoke test of `python -m benchmarks.layers`: finds every layer, times every formulation."""

import json
import math

import pytest

from benchmarks import layers as bench


def test_model_layers_finds_every_conv_dense_and_pool_with_real_shapes():
    calls = bench.model_layers("s4_exp1", image_size=32, batch_size=2)
    assert [c.path for c in calls] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "conv3",
        "pool3",
        "conv4",
        "pool4",
        "head",
        "logits",
    ]
    by_path = {c.path: c for c in calls}
    # 32 -k8p2-> 29 -pool-> 14 -k4p2-> 15 -pool-> 7 -k3p2-> 9 -pool-> 4 -k3p2-> 6 -pool-> 3
    assert by_path["conv2"].in_shape == (2, 14, 14, 128) and (
        by_path["conv2"].kernel_size,
        by_path["conv2"].padding,
    ) == (4, 2)
    assert by_path["pool4"].in_shape == (2, 6, 6, 32)
    assert by_path["head"].in_shape == (2, 3 * 3 * 32)


def test_cli_smoke_run_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "layers.json"
    assert (
        bench.main(
            [
                "--model",
                "lenet5",
                "--image-size",
                "16",
                "--batch-size",
                "2",
                "--repeats",
                "1",
                "--layers",
                "conv1,pool1,dense1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    records = json.loads(out.read_text())
    # conv1 has padding 0 (no "pad_valid", the default formulations otherwise); pools are
    # timed as "xla" and "mask".
    assert [(r["layer"], r["formulation"]) for r in records] == [
        ("conv1", "xla"),
        ("conv1", "im2col"),
        ("conv1", "im2col_dw"),
        ("pool1", "xla"),
        ("pool1", "mask"),
        ("dense1", "xla"),
    ]
    for r in records:
        assert r["fwd_ms"] > 0 and r["dx_ms"] > 0
        assert math.isnan(r["dw_ms"]) == (r["kind"] == "pool")
        assert f"| {r['layer']} |" in table
    assert "mask*" in table and "| conv1 | 2x16x16x1 | 5/0 | xla* |" in table


def test_padded_convs_are_timed_in_both_formulations():
    records = bench.profile(
        "s4_exp2",
        image_size=12,
        batch_size=1,
        repeats=1,
        formulations=("xla", "pad_valid"),
        progress=False,
        only=("conv2", "conv3"),
    )
    conv3 = [(r["formulation"], r["auto"]) for r in records if r["layer"] == "conv3"]
    assert conv3 == [("xla", "pad_valid"), ("pad_valid", "pad_valid")]  # k3/p2: rewritten on CPU
    conv2 = [(r["formulation"], r["auto"]) for r in records if r["layer"] == "conv2"]
    assert conv2 == [("xla", "xla"), ("pad_valid", "xla")]  # k6/p2: left as is


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="has no layer"):
        bench.profile(
            "lenet5", image_size=16, batch_size=1, repeats=1, formulations=("xla",), progress=False, only=("conv9",)
        )
