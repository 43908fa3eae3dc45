"""Training with an ImageNet backbone (cxrjax.models.transfer): pretrained weights, freezing
and the studies' heads, on tiny phantoms (MobileNet v1 at 32 px, no downloads).

The weight file is written by the test in Keras' legacy-HDF5 layout (with an ImageNet top,
which a headed run drops), from a seeded init with random BatchNorm statistics, so a
wrongly loaded or overwritten statistic shows.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxrjax.inference import load_run
from cxrjax.models import transfer
from cxrjax.models.weights import sha256
from cxrjax.train.config import TrainConfig
from cxrjax.train.evaluation import predict_split
from cxrjax.train.optim import make_optimizer
from cxrjax.train.run_setup import RunSetupError, describe_weights, pretrained_backbone, setup_run
from cxrjax.train.trainer import train_and_evaluate
from cxrjax.train.workdir import ConfigMismatchError
from tests.train.support import write_keras_weight_file, write_torchvision_state_dict

# all_but_last:50 of MobileNet's 54 layers with weights: conv1, conv1_bn, conv_dw_1(_bn) frozen.
# (Freezing deeper, a random-init network run on moving statistics saturates its ReLU6s at
# 32 px, the features go constant and the trainable layers get no gradient to show.)
TRAINABLE_LAYERS = 50


class _Killed(Exception):
    pass


def _bits(x):
    return np.asarray(x).view(np.uint32)


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    """(path, variables) of a MobileNet weight file with a top (conv_preds), random BN statistics."""
    module = transfer.backbone_module("mobilenet")
    variables = jax.jit(lambda x: module.init(jax.random.key(7), x, train=False))(jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    stats = {  # moving means N(0, 0.1), variances U(0.5, 1.5): activations stay alive
        layer: {"mean": rng.normal(0.0, 0.1, v["mean"].shape).astype(np.float32),
                "var": rng.uniform(0.5, 1.5, v["var"].shape).astype(np.float32)}
        for layer, v in variables["batch_stats"].items()
    }  # fmt: skip
    variables = {"params": jax.tree.map(np.asarray, variables["params"]), "batch_stats": stats}
    top = {"conv_preds": [("conv_preds/kernel:0", np.zeros((1, 1, 1024, 1000), np.float32)),
                          ("conv_preds/bias:0", np.zeros((1000,), np.float32))]}  # fmt: skip
    path = tmp_path_factory.mktemp("weights") / "mobilenet_1_0_224_tf.h5"
    write_keras_weight_file(variables, transfer.backbone_layers("mobilenet"), path, extra_layers=top)
    return str(path), variables


@pytest.fixture(scope="module")
def config(base_config, weight_file):
    return base_config.replace(
        model="mobilenet",
        model_options={},
        head="s0_d",
        freeze=f"all_but_last:{TRAINABLE_LAYERS}",
        pretrained=weight_file[0],
        epochs=2,
        plots=False,
    )


def test_frozen_run_trains_checkpoints_resumes_and_evaluates(config, weight_file, tmp_path):
    path, loaded = weight_file
    frozen = transfer.backbone_layers("mobilenet")[:-TRAINABLE_LAYERS]

    def kill_after_epoch_1(step):
        if step == 4:
            raise _Killed

    with pytest.raises(_Killed):
        train_and_evaluate(config, tmp_path, on_checkpoint=kill_after_epoch_1)
    results = train_and_evaluate(config, tmp_path)  # resumes at epoch 2
    assert results["epochs_run"] == 2 and results["test"]["num_examples"] == 12
    assert results["weights"]["pretrained"] == path and results["weights"]["sha256"] == sha256(path)
    assert results["weights"]["kind"] == "weight_file" and results["weights"]["source_format"] == "keras_h5"
    assert results["weights"]["tensors_skipped"] == []
    assert json.loads((tmp_path / "config.json").read_text())["pretrained"] == path

    run = load_run(tmp_path, "latest")
    assert run.step == 8
    params, stats = run.variables["params"], run.variables["batch_stats"]
    for layer in frozen:  # frozen: bit-identical to the file, BatchNorm statistics included
        for collection, tree in (("params", params), ("batch_stats", stats)):
            for var, value in tree["backbone"].get(layer, {}).items():
                np.testing.assert_array_equal(_bits(value), _bits(loaded[collection][layer][var]), f"{layer}/{var}")
    for layer in ("conv_pw_13", "conv_pw_13_bn"):  # trainable: moved away from the file
        assert not np.array_equal(np.asarray(params["backbone"][layer][next(iter(params["backbone"][layer]))]),
                                  loaded["params"][layer][next(iter(loaded["params"][layer]))])  # fmt: skip
    assert not np.array_equal(np.asarray(stats["backbone"]["conv_pw_13_bn"]["mean"]),
                              loaded["batch_stats"]["conv_pw_13_bn"]["mean"])  # fmt: skip
    start = setup_run(config).init_fn(config.seed)  # the run's initial state: the file's backbone
    for a, b in zip(jax.tree.leaves(start.params["backbone"]), jax.tree.leaves(loaded["params"]), strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    moved = [
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(start.params["head"]))
    ]
    assert all(moved)  # every head parameter was trained

    # Evaluation after training sees the same model input (preprocessing inside the model).
    evaluated = load_run(tmp_path)
    from cxrjax import data

    ds = data.load(config.dataset, data_dir=config.data_dir, options=config.dataset_options)
    preds = predict_split(evaluated, ds, "test", 8)
    assert np.mean(preds.predictions == preds.labels) == pytest.approx(results["test"]["accuracy"])


def test_relative_pretrained_is_stored_absolute_and_resumes_from_another_directory(
    config, weight_file, tmp_path, monkeypatch
):
    """config.json names the weight file absolutely; the same command (relative
    --pretrained) resumes from another directory where that path holds a copy of the
    file, and is refused where it holds other weights (config.same_pretrained)."""
    import shutil

    for folder in ("project", "elsewhere"):
        (tmp_path / folder / "weights").mkdir(parents=True)
        shutil.copy(weight_file[0], tmp_path / folder / "weights" / "w.h5")
    relative = config.replace(pretrained="weights/w.h5")
    workdir = tmp_path / "run"

    def kill_after_epoch_1(step):
        if step == 4:
            raise _Killed

    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(_Killed):
        train_and_evaluate(relative, workdir, on_checkpoint=kill_after_epoch_1)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["pretrained"] == str(tmp_path / "project" / "weights" / "w.h5")
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = train_and_evaluate(relative, workdir)  # resumed at epoch 2, not refused
    assert results["epochs_run"] == 2 and len((workdir / "metrics.jsonl").read_text().splitlines()) == 2
    elsewhere = str(tmp_path / "elsewhere" / "weights" / "w.h5")
    assert results["weights"]["pretrained"] == elsewhere and results["weights"]["sha256"] == sha256(elsewhere)
    assert json.loads((workdir / "config.json").read_text())["pretrained"] == elsewhere
    (tmp_path / "third" / "weights").mkdir(parents=True)
    (tmp_path / "third" / "weights" / "w.h5").write_bytes(b"other weights")
    monkeypatch.chdir(tmp_path / "third")
    with pytest.raises(ConfigMismatchError, match=f"pretrained: saved '{elsewhere}', now '.*third/weights/w.h5'"):
        train_and_evaluate(relative, workdir)


def test_frozen_parameters_get_no_optimizer_state():
    params = {"backbone": {"a": {"kernel": jnp.ones((3, 2))}, "b": {"kernel": jnp.ones((2,))}},
              "head": {"d": {"kernel": jnp.ones((2, 2))}}}  # fmt: skip
    tx, _ = make_optimizer(TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.1), 1, frozen_layers=("a",))
    state = tx.init(params)
    sizes = sum(int(np.size(x)) for x in jax.tree.leaves(state) if np.ndim(x) > 0)
    assert sizes == 2 * (2 + 4)  # Adam's mu and nu for b and the head only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert np.all(np.asarray(updates["backbone"]["a"]["kernel"]) == 0)
    reference = optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.1))
    expected, _ = reference.update(grads["head"], reference.init(params["head"]), params["head"])
    np.testing.assert_allclose(updates["head"]["d"]["kernel"], expected["d"]["kernel"], rtol=1e-6)


def test_whole_backbone_frozen_has_no_gradient_and_keeps_statistics():
    model = transfer.create_transfer(
        "mobilenet", head="s2_dropout", num_classes=3, channels=1, freeze=("backbone", None)
    )
    assert model.all_frozen and model.preprocessing == "tf"
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)  # one compile, not one per op

    @jax.jit
    def grads_and_stats(variables):
        def loss(params):
            out, new = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.key(2)})  # fmt: skip
            return jnp.sum(out**2), new["batch_stats"]

        return jax.grad(loss, has_aux=True)(variables["params"])

    grads, stats = grads_and_stats(variables)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads["backbone"]))
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(grads["head"]))
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(variables["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(model.feature_names) == {f"stage{i}" for i in range(1, 7)}


def test_freeze_counts_layers_with_weights_from_the_end():
    layers = transfer.backbone_layers("mobilenet")
    assert layers[:3] == ("conv1", "conv1_bn", "conv_dw_1") and layers[-1] == "conv_pw_13_bn"
    assert (
        transfer.frozen_layers_for("mobilenet", "all_but_last", 50)
        == layers[:4]
        == ("conv1", "conv1_bn", "conv_dw_1", "conv_dw_1_bn")
    )
    assert transfer.frozen_layers_for("mobilenet", "all_but_last", 0) == layers
    assert transfer.frozen_layers_for("mobilenet", "none", None) == ()
    with pytest.raises(ValueError, match="has only"):
        transfer.frozen_layers_for("mobilenet", "all_but_last", len(layers) + 1)
    labels = transfer.param_labels({"backbone": {"conv1": {"kernel": 0}, "conv_pw_13": {"kernel": 0}},
                                    "head": {"predictions": {"kernel": 0}}}, layers[:-4])  # fmt: skip
    assert labels == {"backbone": {"conv1": {"kernel": "frozen"}, "conv_pw_13": {"kernel": "trainable"}},
                      "head": {"predictions": {"kernel": "trainable"}}}  # fmt: skip


def test_s0_d_freezes_what_keras_freezes_for_all_but_the_last_50_layers():
    """S0-D froze ``base.layers[:-50]`` of Keras' MobileNetV2; its preset's all_but_last:34
    (layers with weights) freezes exactly the layers with weights among them."""
    keras_reference = pytest.importorskip("tests.models.keras_reference")
    model = keras_reference.keras().applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    keras_frozen = tuple(layer.name for layer in model.layers[:-50] if layer.weights)
    from cxrjax.train.presets import PRESETS

    assert PRESETS["s0_d"].freeze == "all_but_last:34"
    assert transfer.frozen_layers_for("mobilenet_v2", "all_but_last", 34) == keras_frozen


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"freeze": "all_but_last:x"}, "all_but_last:N"),
        ({"freeze": "backbone", "head": "none"}, "needs a head"),
    ],
)
def test_bad_freeze_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"model": "mobilenet", "head": "s2", **changes})


def test_user_mistakes_are_run_setup_errors(config, tmp_path):
    with pytest.raises(RunSetupError, match="not found"):
        setup_run(config.replace(pretrained=str(tmp_path / "missing.h5")))
    with pytest.raises(RunSetupError, match="normalization"):
        setup_run(config.replace(normalization="half"))
    with pytest.raises(RunSetupError, match="--head"):
        setup_run(config.replace(head="none", freeze="none"))
    wrong = tmp_path / "wrong.h5"
    write_keras_weight_file({"params": {"conv1": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}}}, ["conv1"], wrong)
    with pytest.raises(RunSetupError, match="does not match mobilenet"):
        setup_run(config.replace(pretrained=str(wrong)))


def test_an_imported_checkpoint_loads_like_its_weight_file(weight_file, tmp_path):
    """``python -m cxrjax.models import-weights`` writes <out>/meta.json + variables; as
    ``pretrained`` it gives the same backbone as the file, its top dropped."""
    from cxrjax.models.weights import import_weights

    path, loaded = weight_file
    record = import_weights("mobilenet", path, tmp_path / "imported")
    assert record["include_top"]  # the file has conv_preds
    variables, info = transfer.load_backbone_weights("mobilenet", str(tmp_path / "imported"))
    assert info["kind"] == "imported_checkpoint" and info["sha256"] == sha256(path)
    assert set(variables["params"]) == set(loaded["params"])  # conv_preds dropped
    for collection in ("params", "batch_stats"):
        for a, b in zip(jax.tree.leaves(variables[collection]), jax.tree.leaves(loaded[collection]), strict=True):
            np.testing.assert_array_equal(_bits(a), _bits(b))
    with pytest.raises(ValueError, match="holds weights of 'mobilenet', not 'mobilenet_v2'"):
        transfer.load_backbone_weights("mobilenet_v2", str(tmp_path / "imported"))


def test_tensors_skipped_by_design_are_in_the_weights_record(tmp_path, capsys):
    """A torchvision InceptionV3 state dict's AuxLogits.* have no place in the model: the
    run's weights record (results.json["weights"], the line the run starts with) lists
    them, from the file and from its imported checkpoint."""
    from cxrjax.models.weights import import_weights

    aux = {"AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32),
           "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32),
           "AuxLogits.fc.bias": np.zeros((1000,), np.float32)}  # fmt: skip
    path = write_torchvision_state_dict("inception_v3", tmp_path / "inception_v3.safetensors",
                                        options={"variant": "torchvision"}, extra=aux)  # fmt: skip
    config = TrainConfig(model="inception_v3", model_options={"variant": "torchvision"}, head="s2",
                         pretrained=str(path), image_size=75, channels=3)  # fmt: skip
    _, record = pretrained_backbone(config)
    assert record["kind"] == "weight_file" and record["source_format"] == "torchvision"
    assert record["tensors_skipped"] == sorted(aux)  # the file's order (safetensors sorts its keys)
    assert record["tensors"] == len(jax.tree.leaves(_)) == 94 * 5  # 94 convs + BatchNorms, no fc
    assert describe_weights(record).endswith("470 tensors; 3 file tensor(s) skipped by design: AuxLogits.*)")
    assert json.loads(json.dumps(record)) == record  # results.json is strict JSON

    imported = import_weights("inception_v3", str(path), tmp_path / "imported", include_top=False)
    assert imported["tensors_skipped"] == sorted(aux)
    _, record = pretrained_backbone(config.replace(pretrained=str(tmp_path / "imported")))
    assert record["kind"] == "imported_checkpoint" and record["tensors_skipped"] == sorted(aux)
    capsys.readouterr()


def test_preprocessing_inside_the_model_is_keras_preprocess_input_on_rgb():
    """auto -> the backbone's Keras mode ("caffe" for ResNet-family, here forced on MobileNet
    to exercise the BGR flip) on [0,1] * 255, after grayscale -> RGB; "none" passes images as they are."""
    from cxrjax.models.preprocessing import preprocess_input

    gray = jax.random.uniform(jax.random.key(3), (2, 32, 32, 1))
    caffe = transfer.create_transfer("mobilenet", head="s2", num_classes=3, channels=1, preprocessing="caffe")
    plain = transfer.create_transfer("mobilenet", head="s2", num_classes=3, channels=3, preprocessing="none")
    assert transfer.create_transfer("mobilenet", head="s2", num_classes=3).preprocessing == "tf"
    variables = caffe.init(jax.random.key(0), gray, train=False)
    ours = caffe.apply(variables, gray, train=False)
    rgb = np.repeat(np.asarray(gray), 3, axis=-1)
    reference = plain.apply(variables, preprocess_input(rgb * 255.0, "caffe"), train=False)
    # (a random-init MobileNet's logits are tiny at 32 px: compare relative to their scale)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=0)
    unprocessed = plain.apply(variables, rgb, train=False)
    assert np.max(np.abs(ours - unprocessed)) > 0.1 * np.max(np.abs(ours))


def test_efficientnet_auto_preprocessing_feeds_its_model_pixels_in_0_255():
    """EfficientNet normalises inside the model, on [0, 255] pixels: "auto" resolves to
    "pixels", which scales the pipeline's [0, 1] images to [0, 255]; "none" does not.
    (The scaling is the TransferModel's, the same for every backbone: checked on the
    cheaper MobileNet.)"""
    assert transfer.create_transfer("efficientnet_b0", head="s2", num_classes=2).preprocessing == "pixels"
    x = jax.random.uniform(jax.random.key(4), (1, 32, 32, 3))
    pixels = transfer.create_transfer("mobilenet", head="s2", num_classes=2, preprocessing="pixels")
    plain = transfer.create_transfer("mobilenet", head="s2", num_classes=2, preprocessing="none")
    variables = pixels.init(jax.random.key(0), x, train=False)
    np.testing.assert_allclose(
        pixels.apply(variables, x, train=False), plain.apply(variables, x * 255.0, train=False), rtol=1e-4, atol=1e-6
    )


def test_s1_head_is_differentiable_under_jit():
    """A fine-tuned S1 run differentiates through the head's AveragePooling2D."""
    head = transfer.Head("s1", 3, (8,), 0.5, 4)
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    variables = head.init(jax.random.key(1), x, train=False)
    grad = jax.jit(jax.grad(lambda x: head.apply(variables, x, train=False).sum()))(x)
    pooled = np.asarray(x)[:, :4, :4].mean(axis=(1, 2))  # 7x7 -> one 4x4 window (valid), flattened
    dense = variables["params"]["dense1"]
    np.testing.assert_allclose(
        head.apply(variables, x, train=False),
        np.maximum(pooled @ dense["kernel"] + dense["bias"], 0) @ variables["params"]["predictions"]["kernel"]
        + variables["params"]["predictions"]["bias"],
        rtol=1e-5,
        atol=1e-6,
    )
    assert np.all(np.asarray(grad)[:, 4:] == 0) and np.any(np.asarray(grad)[:, :4, :4] != 0)
