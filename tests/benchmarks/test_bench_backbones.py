"""`python -m benchmarks.backbones`: the backbone throughput record and files, the Keras
parity report, and the refusals (unknown backbone, existing file, no keras)."""

import json
import sys

import pytest

from benchmarks import backbones as bench
from benchmarks import keras_reference  # noqa: F401 - sets KERAS_BACKEND=jax before keras is imported
from cxrjax.models.transfer import backbones

# Keras' MobileNet(include_top=False).count_params() (params + BatchNorm statistics).
KERAS_MOBILENET_NOTOP = 3_228_864
# S2's head on MobileNet's 1024 features, 3 classes: Dense 500, Dense 200, Dense 3.
S2_HEAD_ON_1024 = (1024 * 500 + 500) + (500 * 200 + 200) + (200 * 3 + 3)


def test_default_models_are_every_backbone():
    assert sorted(bench.DEFAULT_MODELS) == backbones()


def test_tiny_frozen_run_writes_json_and_markdown(tmp_path, capsys):
    rc = bench.main(
        [
            "--models",
            "mobilenet",
            "--size",
            "32",
            "--batch",
            "2",
            "--num-devices",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--modes",
            "frozen",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith("-backbones.json") and files[1].endswith("-backbones.md")
    assert "-cpu-" in files[0] and files[0][:4].isdigit()
    result = json.loads((tmp_path / files[0]).read_text())
    assert result["schema"] == bench.SCHEMA and result["complete"] is True
    for key in ("loadavg_before", "loadavg_after"):
        assert len(result[key]) == 3 and all(v >= 0 for v in result[key])
    assert result["options"]["image_size"] == 32 and result["options"]["modes"] == ["frozen"]
    (r,) = result["records"]
    assert r["error"] is None
    assert (r["model"], r["mode"], r["freeze"], r["head"], r["optimizer"]) == (
        "mobilenet",
        "frozen",
        "backbone",
        "s2",
        "sgd",
    )
    assert (r["image_size"], r["global_batch"], r["num_devices"], r["per_device_batch"]) == (32, 2, 1, 2)
    # Frozen: only S2's head trains; the backbone matches Keras' headless count.
    assert r["trainable_parameters"] == S2_HEAD_ON_1024
    assert r["parameters"] + r["batch_stats"] - S2_HEAD_ON_1024 == KERAS_MOBILENET_NOTOP
    assert r["train_step_s"]["steps"] == 1 and len(r["warmup_s"]) == 1 and r["compile_s"] > 0
    assert r["images_per_s"] == pytest.approx(2 / r["train_step_s"]["median_s"])
    assert len(r["loadavg_before"]) == 3 and len(r["loadavg_after"]) == 3
    md = (tmp_path / files[1]).read_text()
    assert "| mobilenet | 3,820,279 | 613,303 |" in md and "Load average" in md
    assert "wrote" in capsys.readouterr().out


def test_existing_result_is_not_overwritten(tmp_path, capsys):
    target = tmp_path / "mine.json"
    target.write_text("keep")
    rc = bench.main(["--models", "mobilenet", "--json", str(target), "--out", str(tmp_path)])
    assert rc == 2 and target.read_text() == "keep"
    assert capsys.readouterr().out.startswith("error: ")


def test_unknown_backbone_and_mode_are_refused(tmp_path, capsys):
    assert bench.main(["--models", "resnet5", "--out", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: --models: resnet5") and "resnet50" in out
    assert bench.main(["--modes", "frozen,thawed", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().out.startswith("error: --modes")
    assert list(tmp_path.iterdir()) == []


def test_parity_without_keras_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` raises ImportError
    assert bench.main(["--parity", "--models", "mobilenet", "--out", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: keras is not installed") and "dev" in out
    assert list(tmp_path.iterdir()) == []


def test_parity_record_of_mobilenet(tmp_path):
    pytest.importorskip("keras")
    assert bench.main(["--parity", "--models", "mobilenet", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*-backbone-parity.json")
    result = json.loads(path.read_text())
    assert result["schema"] == bench.PARITY_SCHEMA
    top, headless = result["records"]
    assert (top["include_top"], headless["include_top"]) == (True, False)
    assert headless["keras_parameters"] == KERAS_MOBILENET_NOTOP == headless["parameters"]
    assert top["parameters"] == top["keras_parameters"] and top["output_shape"] == [2, 1000]
    for r in (top, headless):
        assert r["error"] is None and r["image_size"] == 32 and r["parameters_equal"]
        assert r["relative_difference"] == pytest.approx(r["max_abs_difference"] / r["output_scale"])
        assert r["relative_difference"] < 1e-4
    assert (
        "| mobilenet | MobileNet | 32 | headless (avg) | 3,228,864 | 3,228,864 | yes |"
        in path.with_suffix(".md").read_text()
    )


@pytest.mark.parametrize(
    ("load", "expected"),
    [([0.4, 0.5, 0.6], "quiet machine"), ([3.0, 2.0, 1.0], "up to 3.0 on 2 cores): the numbers are indicative")],
)
def test_load_note(load, expected):
    result = {
        "environment": {"host_cpus": 2},
        "loadavg_before": [0.2, 0.2, 0.2],
        "loadavg_after": [0.3, 0.2, 0.2],
        "records": [{"loadavg_before": load, "loadavg_after": [0.1, 0.1, 0.1]}],
    }
    assert expected in bench.load_note(result)


def _record(mode, ips, trainable):
    return {
        "model": "resnet50",
        "mode": mode,
        "num_devices": 2,
        "parameters": 1000,
        "trainable_parameters": trainable,
        "compile_s": 1.0,
        "warmup_s": [0.5],
        "train_step_s": {"median_s": 8 / ips, "spread": 0.1},
        "images_per_s": ips,
        "achieved_tflops": None,
        "xla_memory_bytes_per_device": 2**20,
        "loadavg_before": [0.5, 0.5, 0.5],
        "loadavg_after": [0.5, 0.5, 0.5],
        "error": None,
    }


def test_from_json_renders_the_saved_tables(tmp_path, capsys):
    result = {
        "schema": bench.SCHEMA,
        "argv": ["--models", "resnet50"],
        "environment": {
            "date": "2026-12-01",
            "host": "h",
            "device_kind": "cpu",
            "platform": "cpu",
            "host_cpus": 2,
            "jax_version": "x",
        },
        "options": {"image_size": 224, "batch": 8, "warmup": 1, "steps": 3},
        "loadavg_before": [0.5, 0.5, 0.5],
        "loadavg_after": [0.6, 0.5, 0.5],
        "wall_s": 10.0,
        "records": [_record("frozen", 4.0, 10), _record("finetuned", 1.0, 1000)],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    assert bench.main(["--from-json", str(path), "--markdown", str(tmp_path / "r.md")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "| resnet50 | 1,000 | 10 | 4.00 | 1.00 | 0.25 |" in md  # fine-tuned / frozen = 1 / 4
    assert "| resnet50 | finetuned | 1.0 | 0.50 | 8.000 | 0.10 | 1.00 | - | 1 | 0.5 -> 0.5 | |" in md
    assert "quiet machine" in md and "`python -m benchmarks.backbones --models resnet50`" in md
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    assert bench.main(["--from-json", str(tmp_path / "bad.json")]) == 2
    assert capsys.readouterr().out.startswith("error: --from-json")
