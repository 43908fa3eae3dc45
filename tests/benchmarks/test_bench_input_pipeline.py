"""benchmarks.input_pipeline and the device-resident input path it falls back to, and
benchmarks.device_resident's placement / steps-per-dispatch sweep.

One module-scoped smoke run on 8 tiny phantoms (stored at 32 px): LeNet-5's grain train
and eval pipelines in-process, the train-step rate read from a hand-written throughput
JSON (so nothing is measured twice), and the device-resident step with one timed step.
The device-resident input itself (cxrjax.train.resident) is tested in
tests/train/test_train_resident.py.
"""

import json

import pytest

from benchmarks import device_resident, input_pipeline

STEP_RATE = 1e9  # a train step no pipeline can keep up with -> the resident path runs


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("input_pipeline")
    throughput_json = out / "throughput.json"
    throughput_json.write_text(
        json.dumps(
            {
                "records": [
                    {"model": "lenet5", "image_size": 32, "dtype": "float32", "images_per_s": STEP_RATE, "error": None},
                    {
                        "model": "lenet5",
                        "image_size": 32,
                        "dtype": "bfloat16",
                        "images_per_s": 10 * STEP_RATE,
                        "error": None,
                    },
                ]
            }
        )
    )
    result = input_pipeline.main(
        [
            "--models",
            "lenet5@32",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--batches",
            "1",
            "--num-train",
            "8",
            "--stored-size",
            "32",
            "--data-dir",
            str(out / "data"),
            "--throughput-json",
            str(throughput_json),
            "--json",
            str(out / "p.json"),
            "--markdown",
            str(out / "p.md"),
            "--no-progress",
        ]
    )
    return result, out


def test_smoke_records(smoke):
    result, out = smoke
    assert json.loads((out / "p.json").read_text()) == result
    assert result["schema"] == input_pipeline.SCHEMA
    kinds = [(r["pipeline"], r["workers"]) for r in result["records"]]
    assert kinds == [("train", 0), ("eval", 0), ("device_resident", None)]
    train, evaluation, resident = result["records"]
    for r in (train, evaluation):
        assert r.get("error") is None, r.get("error")
        assert r["batches_timed"] == 1 and r["batches_skipped"] == input_pipeline.SKIP_BATCHES
        assert r["images_per_s"] > 0 and r["startup_s"] >= 0
        assert r["train_step_images_per_s"] == STEP_RATE  # float32 record, not the bfloat16 one
    assert train["augmentation"] == {"normalization": "half", "hflip": True, "rotate_degrees": 10.0}
    assert train["keeps_up"] is (train["images_per_s"] >= STEP_RATE)
    assert "keeps_up" not in evaluation
    assert resident["resident_bytes"] == 8 * 32 * 32 * 1  # the whole uint8 train split
    assert resident["global_batch"] == 4
    assert resident["images_per_s"] == pytest.approx(4 / resident["train_step_s"]["median_s"])
    assert resident["resident_over_plain_step"] == pytest.approx(resident["images_per_s"] / STEP_RATE)
    assert (out / "p.md").read_text().count("| lenet5 | 32 |") == 3


def test_device_resident_sweep_runs_the_trainer(tmp_path):
    """benchmarks.device_resident: one tiny training run per (placement, K), img/s recorded."""
    result = device_resident.main(
        [
            "--models",
            "lenet5@32",
            "--placements",
            "device",
            "--steps-per-dispatch",
            "2",
            "--epochs",
            "2",
            "--per-device-batch-size",
            "1",
            "--num-train",
            "16",
            "--num-eval",
            "4",
            "--stored-size",
            "32",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert json.loads((tmp_path / "r.json").read_text()) == result
    (record,) = result["records"]
    assert record["error"] is None, record["error"]
    assert (record["data_placement"], record["steps_per_dispatch"], record["steps_per_epoch"]) == ("device", 2, 4)
    assert len(record["per_epoch_images_per_second"]) == 2 and record["images_per_second"] > 0
