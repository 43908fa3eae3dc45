"""Per-source metrics and the source probe (``cxrjax.evaluate.sources``), on hand-made
arrays and on a run trained on a D4 fixture whose metadata gives each image a source."""

import json

import numpy as np
import pytest

from cxrjax.evaluate import sources as src


def _probs(predicted, k):
    probs = np.full((len(predicted), k), 0.1 / (k - 1))
    probs[np.arange(len(predicted)), predicted] = 0.9
    return probs


def test_per_source_metrics_equal_hand_computed():
    labels = [0, 0, 1, 1, 1, 0, 1]
    predicted = [0, 1, 1, 1, 0, 0, 1]
    where = ["a", "a", "a", "b", "b", "c", "c"]
    out = src.per_source_metrics(labels, _probs(predicted, 2), where, ["COVID", "Normal"])
    assert list(out) == ["a", "b", "c"]
    assert out["a"]["n"] == 3 and out["a"]["accuracy"] == pytest.approx(2 / 3)
    assert out["b"]["accuracy"] == pytest.approx(1 / 2) and out["c"]["accuracy"] == 1.0
    assert out["a"]["class_counts"] == {"COVID": 2, "Normal": 1}
    assert out["b"]["class_counts"] == {"COVID": 0, "Normal": 2}
    assert out["a"]["confusion_matrix"] == [[1, 1], [0, 1]]
    assert src.per_source_metrics(labels, _probs(predicted, 2), ["a"] * 7, ["COVID", "Normal"]) is None


def _sources(n, rng):
    return rng.choice(np.array(["sirm.org", "github.com/ieee8023", "kaggle.com/c/rsna"]), n, p=[0.5, 0.3, 0.2])


def test_source_probe_finds_features_that_encode_the_source():
    rng = np.random.default_rng(0)
    where = _sources(150, rng)
    names = sorted(set(where))
    onehot = np.stack([where == name for name in names], 1).astype(np.float64)
    features = np.concatenate([onehot * 3 + rng.normal(0, 0.5, onehot.shape), rng.normal(0, 1, (150, 5))], 1)
    labels = np.array([names.index(s) % 2 for s in where])  # the class follows the source
    probe = src.source_probe(features, where, labels)
    assert probe["accuracy"] > 0.95 and probe["p_value"] < src.SIGNIFICANCE
    assert probe["n"] == 150 and probe["n_sources"] == 3 and probe["folds"] == src.PROBE_FOLDS
    assert probe["majority_rate"] == pytest.approx(max((where == s).mean() for s in names))
    assert probe["source_predicts_class_accuracy"] == 1.0 and probe["confounded"]
    assert "confound of DeGrave" in probe["verdict"]


def test_source_probe_on_random_features_is_near_the_majority_rate():
    rng = np.random.default_rng(1)
    where = _sources(200, rng)
    labels = rng.integers(0, 2, 200)  # the classes mix within every source
    probe = src.source_probe(rng.normal(0, 1, (200, 8)), where, labels)
    assert abs(probe["accuracy"] - probe["majority_rate"]) < 0.1
    assert probe["p_value"] > src.SIGNIFICANCE and not probe["confounded"]
    assert probe["class_source_cramers_v"] < 0.3
    assert "not predictable" in probe["verdict"]


def test_source_probe_leaves_out_single_example_sources():
    rng = np.random.default_rng(2)
    where = np.array(["a"] * 20 + ["b"] * 3 + ["c"])
    probe = src.source_probe(rng.normal(0, 1, (24, 4)), where, np.zeros(24, int))
    assert probe["left_out"] == 1 and probe["n"] == 23 and probe["n_sources"] == 2 and probe["folds"] == 3
    assert src.source_probe(rng.normal(0, 1, (21, 4)), where[:21], np.zeros(21, int)) is None  # one source


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def d4_run(tmp_path_factory):
    from cxrjax.train import TrainConfig, train_and_evaluate
    from tests.data import fixtures as fx

    root = tmp_path_factory.mktemp("eval_sources")
    facts = fx.make_d4(root / "download", per_class=6, metadata=True)
    config = TrainConfig(
        model="s4_exp4",
        dataset="covid19_radiography",
        data_dir=str(root / "data"),
        manual_dir=str(root / "download"),
        dataset_options={"image_size": 16, "test_fraction": 0.4, "validation_fraction": 0.1, "split_by": "source"},
        model_options={"features": [3, 4, 5, 6], "head_width": 7},
        image_size=16,
        channels=1,
        epochs=1,
        per_device_batch_size=4,
        num_devices=1,
        progress=False,
    )
    results = train_and_evaluate(config, str(root / "run"))
    return root / "run", facts, results


def test_evaluate_reports_per_source_metrics_and_the_source_probe(d4_run, capsys):
    from cxrjax.data import load
    from cxrjax.evaluate.__main__ import main

    run_dir, facts, results = d4_run
    assert main(["--workdir", str(run_dir), "--batch-size", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run_dir / "eval_covid19_radiography_test.json").read_text())
    names = report["predictions"]["file_name"]
    expected = {}
    for name, label, predicted in zip(names, report["predictions"]["label"], report["predictions"]["predicted"]):
        expected.setdefault(facts["sources"][name], []).append(label == predicted)
    assert sorted(report["per_source"]) == sorted(expected)
    for source, hits in expected.items():
        assert report["per_source"][source]["n"] == len(hits)
        assert report["per_source"][source]["accuracy"] == pytest.approx(np.mean(hits))
    probe = report["source_probe"]  # the fixture's test split has 3 sources with 2+ examples
    assert probe["layer"] == "feat4" and probe["n_sources"] >= 2 and 0.0 <= probe["accuracy"] <= 1.0
    assert probe["n"] + probe["left_out"] == len(names)
    assert "per source: " in out and "source probe: " in out
    ds = load("covid19_radiography", data_dir=str(run_dir.parent / "data"), options=report["dataset_options"])
    assert len(ds.splits["test"]) == len(names)
    # Leave-sources-out: the run records which sources it was trained and tested on.
    assert results["dataset_info"]["split_sources"] == ds.report["split_sources"]
    assert sorted(report["per_source"]) == ds.report["split_sources"]["test"]


def test_features_are_the_pooled_last_feature_layer():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Tiny(nn.Module):
        feature_names = ("feat1", "feat2")

        @nn.compact
        def __call__(self, x, train=False):
            a = self.perturb("feat1", nn.relu(x - 0.5))
            b = self.perturb("feat2", jnp.concatenate([2.0 * a, -a], axis=-1))
            return nn.Dense(3)(b.reshape(len(b), -1))

    model = Tiny()
    x = jax.random.uniform(jax.random.key(0), (5, 6, 6, 1))
    variables = model.init(jax.random.key(1), x)
    fn, layer = src._features_fn(model, variables, (6, 6, 1), None)
    pooled = np.maximum(np.asarray(x) - 0.5, 0).mean(axis=(1, 2))
    assert layer == "feat2"
    np.testing.assert_allclose(np.asarray(fn(variables, x)), np.concatenate([2 * pooled, -pooled], 1), rtol=1e-6)
    fn1, layer1 = src._features_fn(model, variables, (6, 6, 1), "feat1")
    assert layer1 == "feat1"
    np.testing.assert_allclose(np.asarray(fn1(variables, x)), pooled, rtol=1e-6)
