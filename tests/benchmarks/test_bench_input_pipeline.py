"""benchmarks.input_pipeline and the device-resident input path it falls back to.

One module-scoped smoke run on 8 tiny phantoms (stored at 32 px): LeNet-5's grain train
and eval pipelines in-process, the train-step rate read from a hand-written throughput
JSON (so nothing is measured twice), and the device-resident step with one timed step.
The resident batch maker is checked on its own for what makes it a correct input
pipeline: every example once per epoch, labels aligned, a fresh order per epoch.
"""

import json
import math

import numpy as np
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


@pytest.fixture(scope="module")
def batch_maker():
    import jax
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    n = jax.device_count()
    cfg = device_resident.ResidentConfig(per_device_batch=2, hflip=False, rotate_degrees=0.0, seed=3)
    num_examples = 4 * 2 * n  # four steps per epoch
    fn = device_resident.make_batch_fn(num_examples, n, cfg)
    mesh = Mesh(np.array(jax.devices()), (device_resident.AXIS,))
    make = jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P(device_resident.AXIS), check_vma=False)
    )
    # Example i is an image filled with the value i; its label is i + 100.
    images = np.broadcast_to(
        np.arange(num_examples, dtype=np.uint8)[:, None, None, None], (num_examples, 3, 3, 1)
    ).copy()
    labels = np.arange(num_examples, dtype=np.int32) + 100

    def batch(step):
        out = jax.device_get(make(np.int32(step), images, labels))
        ids = np.rint(out["image"][:, 0, 0, 0] * 255).astype(int)
        return ids, out["label"]

    return batch, num_examples


def test_resident_batches_cover_each_epoch_once(batch_maker):
    batch, num_examples = batch_maker
    epoch0 = [batch(s) for s in range(4)]
    ids = np.concatenate([i for i, _ in epoch0])
    assert sorted(ids) == list(range(num_examples))
    assert all(np.array_equal(lab, i + 100) for i, lab in epoch0)
    epoch1 = np.concatenate([batch(s)[0] for s in range(4, 8)])
    assert sorted(epoch1) == list(range(num_examples))
    assert not np.array_equal(ids, epoch1)  # a fresh permutation per epoch
    assert np.array_equal(batch(5)[0], batch(5)[0])  # a pure function of the step


def test_rotation_is_exact_for_quarter_turns():
    import jax

    rotate = jax.jit(device_resident._rotate)  # one compile for both angles
    image = np.arange(25, dtype=np.float32).reshape(5, 5, 1)
    np.testing.assert_allclose(np.asarray(rotate(image, math.pi / 2)), np.rot90(image, -1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(rotate(image, 0.0)), image, atol=1e-6)
