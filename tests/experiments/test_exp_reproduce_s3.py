"""experiments.reproduce_s3: S3's protocol per network (on phantoms and on DP), S3's numbers
in the table; with a fake run function (no training)."""

import json

import jax
import pytest

from experiments import reproduce_s3


class Fake:
    ACC = {"lenet5": 0.70, "vgg16": 0.25, "vgg16_bn": 0.60}

    def __init__(self):
        self.configs = {}

    def __call__(self, config, workdir):
        self.configs[(config.model, config.seed)] = config
        acc = self.ACC[config.model] + 0.01 * config.seed
        return {"test": {"accuracy": acc, "macro_f1": acc - 0.1}, "best_epoch": 2, "epochs_run": 5}


@pytest.mark.parametrize("manual", [False, True], ids=["phantoms", "dp"])
def test_s3_protocol_and_table(tmp_path, manual):
    fake = Fake()
    argv = [
        "--workdir",
        str(tmp_path / "s3"),
        "--seeds",
        "2",
        "--no-progress",
        "--compilation-cache",
        "",
        "--jobs",
        "1",
    ]
    if manual:
        argv += ["--manual-dir", str(tmp_path / "Covid19-dataset")]
    assert reproduce_s3.main(argv, run_fn=fake) == 0
    assert sorted(fake.configs) == sorted((m, s) for m in ("lenet5", "vgg16", "vgg16_bn") for s in (0, 1))
    for (model, _), c in fake.configs.items():
        assert (c.optimizer, c.lr, c.monitor, c.early_stopping_patience, c.early_stopping_min_delta) == (
            "adam",
            1e-3,
            "val_loss",
            3,
            0.001,
        )
        assert c.channels == 1 and c.normalization == "half" and c.hflip and c.rotate_degrees == 10.0
        assert c.restore_best and c.per_device_batch_size == 25 // jax.local_device_count()
        vgg_size = 224 if manual else reproduce_s3.DEFAULTS.vgg_image_size
        assert c.image_size == (32 if model == "lenet5" else vgg_size)
        if manual:
            assert c.dataset == "covid19_image_dataset" and c.dataset_options == {"validation_fraction": 0.2}
        else:
            assert c.dataset == "cxr_phantoms" and c.dataset_options["num_test"] == reproduce_s3.DEFAULTS.num_test
    assert fake.configs[("vgg16", 0)].model_options == {"init_style": "normal_0.05"}
    md = (tmp_path / "s3" / "results.md").read_text()
    assert "| LeNet-5 (32 px) | lenet5 | 2 | 70.5 [" in md
    assert "84.8 (S3)" in md and "72.7 (S3)" in md
    assert "LeNet-5 beats VGG16" in md
    assert ("inside our 95% CI" in md) == manual  # S3's numbers are only tested on S3's data
    saved = json.loads((tmp_path / "s3" / "runs" / "vgg16_bn" / "seed_1" / "config.json").read_text())
    assert saved["model"] == "vgg16_bn" and saved["seed"] == 1
