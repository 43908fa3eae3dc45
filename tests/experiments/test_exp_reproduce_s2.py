"""experiments.reproduce_s2: S2's protocol per backbone and mode, the weights each cell
starts from, S2's numbers in the table; with a fake run function (no training)."""

import jax

from experiments import reproduce_s2


class Fake:
    def __init__(self):
        self.configs = {}

    def __call__(self, config, workdir):
        self.configs[(config.model, config.freeze, config.seed)] = config
        acc = 0.5 + 0.1 * (config.freeze == "none") + 0.01 * config.seed
        return {"test": {"accuracy": acc, "macro_f1": acc - 0.1}, "best_epoch": 2, "epochs_run": 2}


ARGV = ["--seeds", "2", "--no-progress", "--compilation-cache", "", "--jobs", "1"]


def test_s2_cells_protocol_and_table_without_weights(tmp_path):
    fake = Fake()
    assert reproduce_s2.main(["--workdir", str(tmp_path / "s2"), *ARGV], run_fn=fake) == 0
    models = {"densenet121", "resnet50", "vgg16_imagenet", "inception_v3", "xception"}
    assert {(m, f) for m, f, _ in fake.configs} == {(m, f) for m in models for f in ("backbone", "none")}
    for (model, _, _), c in fake.configs.items():
        assert (c.optimizer, c.lr, c.decay, c.momentum, c.nesterov) == ("sgd", 0.01, 1e-6, 0.9, True)
        assert (c.head, c.normalization, c.hflip, c.brightness, c.zoom) == (
            "s2",
            "dataset",
            True,
            (0.8, 1.25),
            (1.0, 1.2),
        )
        assert c.per_device_batch_size == 32 // jax.local_device_count() and not c.restore_best
        assert c.pretrained is None and c.classes == reproduce_s2.S2_CLASSES and c.dataset == "cxr_phantoms"
        assert c.image_size == {"inception_v3": 75, "xception": 71}.get(model, 32) and c.epochs == 2
    md = (tmp_path / "s2" / "results.md").read_text()
    assert "Random init: no ImageNet weights" in md.split("|")[0]  # above the table
    assert "| 98.75 (S2) |" in md and "| 33.88 (S2) |" in md and "Fine-tuned Xception" in md


def test_s2_weights_per_backbone_and_d3(tmp_path):
    fake = Fake()
    argv = [
        "--workdir",
        str(tmp_path / "s2"),
        "--manual-dir",
        str(tmp_path / "D3"),
        "--cells",
        "xception_ec,xception_ft",
    ]
    argv += ["--weights", "xception=/w/xception_notop.h5", *ARGV]
    assert reproduce_s2.main(argv, run_fn=fake) == 0
    assert {c.pretrained for c in fake.configs.values()} == {"/w/xception_notop.h5"}
    c = next(iter(fake.configs.values()))
    assert c.dataset == "covid19_radiography" and c.image_size == 224 and c.epochs == 20
    assert c.dataset_options == {"test_fraction": 0.2, "validation_fraction": 0.08}
    md = (tmp_path / "s2" / "results.md").read_text()
    assert "ImageNet weights: xception: /w/xception_notop.h5" in md and "Random init" not in md


def test_s2_unknown_weights_name_is_an_error(tmp_path, capsys):
    assert reproduce_s2.main(["--workdir", str(tmp_path), "--weights", "vgg19=x.h5", *ARGV], run_fn=Fake()) == 2
    assert "unknown backbone 'vgg19'" in capsys.readouterr().out
