"""The device-resident input (data_placement="device") and several steps per dispatch.

Tiny phantoms at 16 px (32 train images: 4 steps of 8 on the 4 forced devices). Without
augmentation the device batches are the grain pipeline's (order and content, bit for
bit); with it they are deterministic, device-count independent and the host path's
transforms within interpolation tolerance. A K-step scan equals K single steps, a device
run equals a host run without augmentation, a killed device run resumes bit-identical,
and a non-finite step inside a scan is reported with its own global step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.data import augment
from cxrjax.inference import load_run
from cxrjax.train import TrainConfig, resident
from cxrjax.train.checkpointing import CheckpointStore
from cxrjax.train.data_api import data_api
from cxrjax.train.evaluation import EnginePredictor, predict_split
from cxrjax.train.run_setup import setup_run
from cxrjax.train.trainer import NonFiniteError, train_and_evaluate
from tests.train.support import history, inject_nan

AUGMENT = dict(hflip=True, rotate_degrees=20.0, zoom=(0.8, 1.25), brightness=(0.7, 1.3))


@pytest.fixture(scope="module")
def base_config(base_config):
    """The shared tiny run (tests/train/conftest.py) at 16 px: 32 images, 4 steps of 8."""
    return base_config.replace(
        dataset_options={"num_train": 32, "num_validation": 6, "num_test": 6, "image_size": 16},
        image_size=16,
        per_device_batch_size=2,
        per_device_eval_batch_size=1,  # 4 per eval batch: 6 examples -> a padded last batch
    )


def _resident(config):
    setup = setup_run(config)
    r = resident.ResidentInput(
        setup.engine,
        setup.dataset,
        setup.input_config,
        global_batch=setup.global_batch_size,
        eval_global_batch=setup.eval_global_batch_size,
        steps_per_epoch=setup.steps_per_epoch,
    )
    return setup, r


def _epoch_batches(setup, r, epoch):
    state = setup.init_fn(setup.config.seed)
    r.start_epoch(setup.config.seed, epoch)
    spe = setup.steps_per_epoch
    return [r.batch(state.replace(step=jnp.int32(epoch * spe + i))) for i in range(spe)]


@pytest.mark.parametrize(
    "options", [dict(normalization="half"), dict(normalization="dataset", balanced_sampling=True, channels=3)]
)
def test_device_batches_equal_the_grain_batches_without_augmentation(base_config, options):
    config = base_config.replace(seed=3, **options)
    setup, r = _resident(config)
    data = data_api()
    for epoch in (0, 1):
        grain = data.train_batches(
            setup.dataset, "train", setup.input_config, seed=3, epoch=epoch, global_batch_size=setup.global_batch_size
        )
        device = _epoch_batches(setup, r, epoch)
        assert len(device) == len(grain) == 4
        for i, batch in enumerate(device):
            np.testing.assert_array_equal(batch["label"], grain[i]["label"])
            np.testing.assert_array_equal(batch["image"], grain[i]["image"])  # bit for bit
    assert batch["image"].shape == (8, 16, 16, config.channels)


def test_augmented_device_batches_are_deterministic_and_device_count_independent(base_config):
    config = base_config.replace(**AUGMENT)
    setup, r = _resident(config)
    epoch0, again, epoch1 = _epoch_batches(setup, r, 0), _epoch_batches(setup, r, 0), _epoch_batches(setup, r, 1)
    grain = data_api().train_batches(setup.dataset, "train", setup.input_config, seed=0, epoch=0, global_batch_size=8)
    for i, batch in enumerate(epoch0):
        assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.float32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0  # unit normalisation, clipped brightness
        np.testing.assert_array_equal(batch["image"], again[i]["image"])  # (seed, epoch, position) only
        np.testing.assert_array_equal(batch["label"], grain[i]["label"])  # the grain order, augmented or not
        assert not np.allclose(batch["image"], grain[i]["image"], atol=0.05)  # augmented
    assert not np.array_equal(epoch0[0]["image"], epoch1[0]["image"])
    # One device, the same global batch: the same batches.
    one_setup, one = _resident(config.replace(num_devices=1, per_device_batch_size=8, per_device_eval_batch_size=4))
    for a, b in zip(epoch0, _epoch_batches(one_setup, one, 0), strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)


def test_device_augmentation_is_the_host_transform_within_interpolation_tolerance(base_config):
    ds = data_api().load(base_config.dataset, data_dir=base_config.data_dir, options=base_config.dataset_options)
    image = augment.resize(np.asarray(ds.splits["train"][0]["image"]), 16)
    t = resident.Transform(image_size=16, channels=1, shift=0.0, scale=1.0, **AUGMENT)
    uniforms = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    device = jax.jit(lambda x, u: resident.to_model_input(x, t, u))(np.broadcast_to(image, (12, 16, 16)), uniforms)
    flips = 0
    for k, u in enumerate(uniforms):
        p = augment.params_from_uniforms(u.astype(np.float64), **AUGMENT)  # the host path's definition
        p = augment.AugmentParams(bool(p.flip), float(p.angle_degrees), float(p.zoom), float(p.brightness))
        flips += p.flip
        host = augment.to_unit_float(augment.geometry(image, p), p.brightness)  # PIL affine, uint8
        diff = np.abs(np.asarray(device[k, ..., 0]) - host)
        assert diff.max() <= 1.5 / 255, (k, p, diff.max() * 255)  # the host rounds to uint8 before brightness
        assert np.abs(host - augment.to_unit_float(image)).max() > 0.1  # a real transform
    assert 0 < flips < len(uniforms)
    # Quarter turns and identity are exact.
    square = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_allclose(np.asarray(resident.affine(square, 90.0, 1.0)), np.rot90(square), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(resident.affine(square, 0.0, 1.0)), square)


def test_k_step_scan_equals_k_single_steps_and_evaluation_reads_the_device_copy(base_config):
    # SGD: Adam's first steps turn rounding-level gradient differences into lr-sized ones.
    setup, r = _resident(base_config.replace(hflip=True, optimizer="sgd"))
    engine, state = setup.engine, setup.init_fn(0)
    r.start_epoch(0, 0)

    start = jax.tree.leaves(engine.host_state(engine.put_state(state)).params)

    def equal(a, b):
        # Equal to float32 rounding: XLA compiles a step inside a scan's loop body apart
        # from a top-level one, and may order a reduction differently (a few ulp). A leaf
        # whose gradient nearly cancels (a bias moving ~1e-6) shows those ulp as a large
        # relative difference, so the absolute tolerance is relative to the largest update:
        # a missing, repeated or wrong step moves parameters by the update itself.
        a, b = engine.host_state(a), engine.host_state(b)
        assert int(a.step) == int(b.step) == 3
        moved = zip(jax.tree.leaves(a.params), start, strict=True)
        update = max(float(np.max(np.abs(np.asarray(x, np.float64) - s))) for x, s in moved)
        assert update > 1e-3, update  # three steps really trained
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-3 * update)
        return True

    scanned, metrics = r.train_steps(engine.put_state(state), 3)
    single = engine.put_state(state)
    losses = []
    for _ in range(3):
        single, m = r.train_steps(single, 1)
        losses.append(float(engine.host_metrics(m)["loss"][0]))
    assert equal(scanned, single)
    np.testing.assert_allclose(engine.host_metrics(metrics)["loss"], np.float32(losses), rtol=1e-5)
    # The host path's scan (engine.train_steps on stacked batches) equals its single steps too.
    batches = [r.batch(state.replace(step=jnp.int32(i))) for i in range(3)]
    stacked = {k: np.stack([b[k] for b in batches]) for k in ("image", "label")}
    host_scanned, host_metrics = engine.train_steps(engine.put_state(state), engine.put_batches(stacked))
    host_single = engine.put_state(state)
    for b in batches:
        host_single, _ = engine.train_step(host_single, engine.put_batch(b))
    assert equal(host_scanned, host_single) and equal(host_scanned, scanned)
    assert engine.host_metrics(host_metrics)["loss"].shape == (3,)
    # Evaluation from the device copy = the host pipeline's (6 examples, padded last batch).
    own = predict_split(r.predictor(scanned), setup.dataset, "validation", setup.eval_global_batch_size)
    host = predict_split(EnginePredictor(engine, scanned, setup.input_config, 4), setup.dataset, "validation", 4)
    assert len(own.labels) == 6
    np.testing.assert_array_equal(own.labels, host.labels)
    np.testing.assert_allclose(own.probs, host.probs, rtol=1e-6, atol=1e-7)


def test_device_run_equals_host_run_without_augmentation(base_config, tmp_path):
    # One step per call on both: the same program around the same batches, bit for bit.
    config = base_config.replace(epochs=2)
    host = train_and_evaluate(config, tmp_path / "host")
    device = train_and_evaluate(config.replace(data_placement="device"), tmp_path / "device")
    assert history(tmp_path / "host", timing=False) == history(tmp_path / "device", timing=False)
    for key in ("validation", "test", "best_epoch"):
        assert host[key] == device[key], key
    a, b = load_run(tmp_path / "host", "latest"), load_run(tmp_path / "device", "latest")
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(x, y)


class _Killed(Exception):
    pass


def test_killed_device_run_resumes_bit_identical(base_config, tmp_path):
    # 3 epochs of 4 steps, 2 per call, a checkpoint every 2 steps: killed after step 6's
    # checkpoint (the middle of epoch 2, between two calls), resumed in a new session.
    config = base_config.replace(
        epochs=3, data_placement="device", steps_per_dispatch=2, checkpoint_every_steps=2, **AUGMENT
    )
    straight = train_and_evaluate(config, tmp_path / "straight")

    def kill_at(step):
        if step == 6:
            raise _Killed

    with pytest.raises(_Killed):
        train_and_evaluate(config, tmp_path / "resumed", on_checkpoint=kill_at)
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    a, b = load_run(tmp_path / "straight", "latest"), load_run(tmp_path / "resumed", "latest")
    assert a.step == b.step == 12
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(x, y)
    assert history(tmp_path / "straight", timing=False) == history(tmp_path / "resumed", timing=False)
    for key in ("test", "validation", "best_epoch", "evaluated"):
        assert straight[key] == resumed[key], key
    # A resume that switches placement is refused (config.json names the field).
    from cxrjax.train.workdir import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match="data_placement"):
        train_and_evaluate(config.replace(data_placement="host"), tmp_path / "resumed")
    # "auto" (the default) resumes a run with the placement its checkpoint was trained with,
    # e.g. a run trained on the host path when that was the default, killed, resumed by
    # a session that asks for auto (which alone would pick device for data this small).
    host = config.replace(data_placement="host")
    host_straight = train_and_evaluate(host, tmp_path / "host_straight")
    with pytest.raises(_Killed):
        train_and_evaluate(host, tmp_path / "host_then_auto", on_checkpoint=kill_at)
    carried_on = train_and_evaluate(config.replace(data_placement="auto"), tmp_path / "host_then_auto")
    store = CheckpointStore(tmp_path / "host_then_auto" / "checkpoints")
    assert store.restore(store.latest_step())[1]["data_placement"] == "host"
    for key in ("test", "validation", "best_epoch"):
        assert carried_on[key] == host_straight[key], key


def test_nonfinite_step_inside_a_scan_is_reported_with_its_global_step(base_config, tmp_path, monkeypatch):
    inject_nan(monkeypatch, {1: {3}})  # epoch 2, batch 3: the second step of the call [2, 3]
    config = base_config.replace(epochs=2, steps_per_dispatch=2)
    with pytest.raises(NonFiniteError) as err:
        train_and_evaluate(config, tmp_path)
    assert (err.value.step, err.value.epoch, err.value.batch) == (7, 2, 3)


def test_placement_choice(base_config, monkeypatch):
    ds = data_api().load(base_config.dataset, data_dir=base_config.data_dir, options=base_config.dataset_options)
    devices = jax.devices()
    nbytes = resident.resident_bytes(ds, 16)
    assert nbytes == (32 + 6 + 6) * 16 * 16
    auto = base_config.replace(data_placement="auto")
    assert resident.choose_placement(auto, ds, 16, devices) == "device"
    assert resident.choose_placement(auto, ds, 16, devices, resumed="host") == "host"  # auto keeps a run's
    assert base_config.data_placement == "auto" == TrainConfig().data_placement  # the default
    assert resident.choose_placement(base_config.replace(data_placement="host"), ds, 16, devices) == "host"
    monkeypatch.setattr(resident, "CPU_BUDGET_BYTES", nbytes - 1)
    assert resident.choose_placement(auto, ds, 16, devices) == "host"  # over the budget
    assert resident.choose_placement(auto.replace(data_placement="device"), ds, 16, devices) == "device"
    assert resident.choose_placement(auto.replace(parallel="pmap"), ds, 16, devices) == "host"
    with pytest.raises(resident.PlacementError, match="--data-placement host"):
        resident.choose_placement(auto.replace(parallel="pmap", data_placement="device"), ds, 16, devices)


def test_command_line_and_user_errors(base_config, tmp_path):
    from cxrjax.train.cli import build_parser, config_from_args
    from cxrjax.train.run_setup import RunSetupError

    config = config_from_args(build_parser().parse_args(["--data-placement", "device", "--steps-per-dispatch", "4"]))
    assert (config.data_placement, config.steps_per_dispatch) == ("device", 4)
    with pytest.raises(ValueError, match="steps_per_dispatch must be >= 1"):
        base_config.replace(steps_per_dispatch=0)
    with pytest.raises(ValueError, match="data_placement='gpu' is not one of"):
        base_config.replace(data_placement="gpu")
    # The CLI prints a RunSetupError as one error: line naming the fix.
    with pytest.raises(RunSetupError, match="use --data-placement host"):
        train_and_evaluate(base_config.replace(parallel="pmap", data_placement="device"), tmp_path)


NEW_AUGMENT = dict(translate=0.15, contrast=(0.7, 1.3), gamma=(0.7, 1.4), random_erasing=0.6, border_erase=0.15)


def test_new_options_on_the_device_are_the_host_transform_within_interpolation_tolerance(base_config):
    options = {**AUGMENT, "rotate_degrees": 10.0, "zoom": (0.9, 1.1), **NEW_AUGMENT}
    ds = data_api().load(base_config.dataset, data_dir=base_config.data_dir, options=base_config.dataset_options)
    image = augment.resize(np.asarray(ds.splits["train"][1]["image"]), 16)
    uniforms = np.random.default_rng(1).random((16, augment.NUM_UNIFORMS)).astype(np.float32)
    batch = np.broadcast_to(image, (16, 16, 16))
    unit = resident.Transform(image_size=16, channels=1, shift=0.0, scale=1.0, **options)
    device = np.asarray(jax.jit(lambda x, u: resident.to_model_input(x, unit, u))(batch, uniforms))[..., 0]
    intensity = {k: options[k] for k in ("contrast", "gamma", "random_erasing", "border_erase")}
    erased = 0
    for k, u in enumerate(uniforms):
        p = augment.params_from_uniforms(u.astype(np.float64), **options)  # the host path's definition
        p = augment.AugmentParams(*(bool(v) if n in ("flip", "erase") else float(v) for n, v in zip(p._fields, p)))
        host = augment.apply(image, p, **intensity)  # PIL affine (uint8), then the shared array code
        erased += p.erase
        diff = np.abs(device[k] - host)
        assert diff.max() <= 2.0 / 255, (k, p, diff.max() * 255)
        assert np.abs(host - augment.to_unit_float(image)).max() > 0.1  # a real transform
    assert 0 < erased < len(uniforms)
    # per_image on the device: the shared normalize_per_image of the same augmented values.
    per_image = resident.Transform(image_size=16, channels=1, shift=0.0, scale=1.0, per_image=True, **options)
    standardised = np.asarray(jax.jit(lambda x, u: resident.to_model_input(x, per_image, u))(batch, uniforms))[..., 0]
    np.testing.assert_allclose(standardised, augment.normalize_per_image(device, np), atol=1e-5)
    np.testing.assert_allclose(standardised.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardised.std(axis=(1, 2)), 1.0, atol=1e-4)
    # The first four uniforms of an example are the same with or without the new options.
    key, positions = jax.random.key(3), jnp.arange(5, dtype=jnp.int32)
    four, all17 = resident.uniforms_for(key, 2, positions), resident.uniforms_for(key, 2, positions, extra=True)
    assert all17.shape == (5, augment.NUM_UNIFORMS)
    np.testing.assert_array_equal(all17[:, :4], four)


def test_crop_box_and_per_image_device_batches_equal_the_grain_batches(base_config):
    data = data_api()
    for options, exact in ((dict(crop_box=(0.1, 0.9, 0.2, 0.8)), True), (dict(normalization="per_image"), False)):
        setup, r = _resident(base_config.replace(**options))
        grain = data.train_batches(
            setup.dataset, "train", setup.input_config, seed=0, epoch=1, global_batch_size=setup.global_batch_size
        )
        for i, batch in enumerate(_epoch_batches(setup, r, 1)):
            np.testing.assert_array_equal(batch["label"], grain[i]["label"])
            if exact:
                np.testing.assert_array_equal(batch["image"], grain[i]["image"])  # bit for bit
            else:  # the per-image mean/std are reduced in another order on the device
                np.testing.assert_allclose(batch["image"], grain[i]["image"], atol=1e-5)
        state = setup.engine.put_state(setup.init_fn(0))
        own = predict_split(r.predictor(state), setup.dataset, "validation", setup.eval_global_batch_size)
        host = predict_split(
            EnginePredictor(setup.engine, state, setup.input_config, 4), setup.dataset, "validation", 4
        )
        np.testing.assert_allclose(own.probs, host.probs, rtol=1e-5, atol=1e-6)
    plain = _epoch_batches(*_resident(base_config), 1)
    assert not np.allclose(plain[0]["image"], grain[0]["image"], atol=0.05)  # per_image changed them


def test_new_augmented_device_batches_are_deterministic_and_in_range(base_config):
    setup, r = _resident(base_config.replace(**NEW_AUGMENT))
    first, again = _epoch_batches(setup, r, 0), _epoch_batches(setup, r, 0)
    plain = _epoch_batches(*_resident(base_config), 0)
    for a, b, c in zip(first, again, plain, strict=True):
        assert a["image"].shape == (8, 16, 16, 1) and 0.0 <= a["image"].min() and a["image"].max() <= 1.0
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], c["label"])
        assert not np.allclose(a["image"], c["image"], atol=0.05)
