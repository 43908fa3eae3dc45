"""`python -m experiments.recipe_ablation` end to end on tiny phantoms (16 px, 2 folds, 1
seed, 1 epoch, 2 ingredients): the cells (studies' settings, full recipe, leave-one-out,
add-one; a cell two lists name trained once), the table's means and paired differences
against hand-computed values from the cross-validation's runs, the probe beside accuracy,
a rerun that trains nothing, an interrupted ablation that resumes, and refused options."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from cxrjax.reporting.stats import mean_ci
from experiments import recipe_ablation as ra
from tests.experiments.support import compilation_cache, tiny_args

BASE = "none+label_smoothing+class_weights"
CACHE = "jax_cache"  # the module's compilation cache, in the ``finished`` fixture's folder


def ablation_args(
    tmp, workdir="abl", base=BASE, extra=("--add-one", "--ingredients", "label_smoothing,class_weights"), cache=False
):
    """``cache``: the module's compilation cache (``tmp / CACHE``, the ``finished`` fixture's)."""
    args = tiny_args(tmp, workdir)
    i = args.index("--recipe")
    del args[i : i + 2]  # the ablation decides the cells
    if cache:
        args[args.index("--compilation-cache") + 1] = str(tmp / CACHE)
    return args + ["--base-recipe", base, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    with compilation_cache(tmp / CACHE):
        assert ra.main(ablation_args(tmp, cache=True)) == 0
        yield tmp


def _ablation(tmp, workdir="abl"):
    return json.loads((tmp / workdir / ra.ABLATION_JSON).read_text())


def test_cells_roles_and_one_run_per_distinct_recipe(finished, capsys):
    rows = _ablation(finished)["rows"]
    assert [(r["recipe"], r["role"], r["ingredient"]) for r in rows] == [
        (None, "none", None),
        ("none+label_smoothing+class_weights", "full", None),
        ("none+class_weights", "leave_one_out", "label_smoothing"),
        ("none+label_smoothing", "leave_one_out", "class_weights"),
        ("none+label_smoothing", "add_one", "label_smoothing"),
        ("none+class_weights", "add_one", "class_weights"),
    ]
    # 4 distinct recipes x 2 folds x 1 seed; the leave-one-out cells here equal the add-one cells
    cv_results = json.loads((finished / "abl" / "results.json").read_text())
    assert [c["name"] for c in cv_results["cells"]] == [
        "s4_exp2__none",
        "s4_exp2__none+label_smoothing+class_weights",
        "s4_exp2__none+class_weights",
        "s4_exp2__none+label_smoothing",
    ]
    assert sorted(p.name for p in (finished / "abl" / "runs").iterdir()) == sorted(
        f"{c['name']}__fold{f}" for c in cv_results["cells"] for f in (0, 1)
    )
    config = json.loads(
        (finished / "abl" / "runs" / "s4_exp2__none+class_weights__fold0/seed_0/config.json").read_text()
    )
    assert config["recipe"] == "none+class_weights" and config["class_weights"] == "balanced"
    assert config["label_smoothing"] == 0.0
    text = (finished / "abl" / ra.ABLATION_MD).read_text()
    assert "## s4_exp2" in text and "| none+class_weights | without label_smoothing |" in text
    assert "| none+class_weights | none plus class_weights |" in text and "thorax only vs reference" in text


def test_means_and_paired_differences_are_the_runs(finished):
    cv_cells = {c["name"]: c for c in json.loads((finished / "abl" / "results.json").read_text())["cells"]}
    rows = _ablation(finished)["rows"]
    for row in rows:
        runs = cv_cells[row["name"]]["runs"]
        assert row["runs"] == len(runs) == 2
        for metric in ("accuracy", "macro_f1", "center_only", "thorax_minus_full"):
            ci = mean_ci([r[metric] for r in runs])
            m = row["metrics"][metric]
            assert (m["mean"], m["n"]) == (pytest.approx(ci.mean), 2)
            assert m["low"] == pytest.approx(ci.low, nan_ok=True) and m["high"] == pytest.approx(ci.high, nan_ok=True)
    by_role = {(r["role"], r["ingredient"]): r for r in rows}
    assert by_role[("full", None)]["differences"] == {}
    for (role, ingredient), row in by_role.items():
        if role == "full":
            continue
        reference = "s4_exp2__" + (BASE if role in ("none", "leave_one_out") else "none")
        for metric in ra.DIFF_METRICS:
            d = row["differences"][metric]
            assert d["reference"] == reference and d["n_pairs"] == 2
            a = {(r["fold"], r["seed"]): r[metric] for r in cv_cells[row["name"]]["runs"]}
            b = {(r["fold"], r["seed"]): r[metric] for r in cv_cells[reference]["runs"]}
            diffs = np.array([a[k] - b[k] for k in sorted(a)])
            assert d["difference"] == pytest.approx(diffs.mean())  # paired by (fold, seed)
            if diffs.std() > 0:
                assert d["p"] == pytest.approx(
                    sps.ttest_rel([a[k] for k in sorted(a)], [b[k] for k in sorted(a)]).pvalue
                )
            assert d["sign_flip_floor"] == pytest.approx(0.5)  # 2 / 2^2 pairs
    # Holm within each family: leave-one-out has 2 comparisons, "none vs recipe" 1
    for metric in ra.DIFF_METRICS:
        loo = [by_role[("leave_one_out", n)]["differences"][metric] for n in ("label_smoothing", "class_weights")]
        ps = [d["p"] for d in loo]
        if all(np.isfinite(ps)):
            low, high = sorted(ps)
            expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), min(1.0, high))}
            assert [d["p_holm"] for d in loo] == pytest.approx([expected[p] for p in ps])
        none = by_role[("none", None)]["differences"][metric]
        assert none["p_holm"] == pytest.approx(none["p"], nan_ok=True) and "1 comparisons" in none["holm_family"]


def test_rerun_trains_nothing_and_writes_the_same_table(finished, capsys):
    before = _ablation(finished)
    assert ra.main(ablation_args(finished, cache=True)) == 0
    assert "(0 trained now, 8 already finished)" in capsys.readouterr().out
    assert _ablation(finished) == before


def test_interrupted_ablation_resumes_into_the_same_layout(finished, capsys):
    from cxrjax.train import train_and_evaluate

    calls = []

    def interrupt_second(config, workdir, dataset):
        calls.append(workdir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_and_evaluate(config, workdir, dataset=dataset)

    args = ablation_args(finished, "resumed", base="none+label_smoothing", extra=(), cache=True)
    with pytest.raises(KeyboardInterrupt):
        ra.main(args, train_fn=interrupt_second)
    assert not (finished / "resumed" / ra.ABLATION_JSON).exists()
    capsys.readouterr()
    assert ra.main(args) == 0
    assert "(3 trained now, 1 already finished)" in capsys.readouterr().out
    rows = {r["recipe"]: r for r in _ablation(finished, "resumed")["rows"]}
    assert set(rows) == {None, "none+label_smoothing"}  # none+label_smoothing-label_smoothing is none
    full = {r["recipe"]: r for r in _ablation(finished)["rows"] if r["role"] in ("none", "add_one")}
    # the same folds and configs as the other workdir's cells: the same runs
    assert rows[None]["metrics"] == full[None]["metrics"]
    assert rows["none+label_smoothing"]["metrics"] == full["none+label_smoothing"]["metrics"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--recipe", "cxr"], "--recipe is not used"),
        (["--base-recipe", "none"], "no ingredients to ablate"),
        (["--base-recipe", "cxr", "--ingredients", "ema"], "not in recipe 'cxr'"),
        (["--ingredients", "nope"], "unknown ingredient 'nope'"),
        (["--base-recipe", "cxr+augment"], "already in it"),
    ],
)
def test_refused_options_are_one_error_line(extra, needle, tmp_path, capsys):
    argv = ["--model", "lenet5", "--workdir", str(tmp_path / "x"), "--data-dir", str(tmp_path), *extra]
    assert ra.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (tmp_path / "x").exists()


def test_list_cells_names_the_leave_one_out_of_cxr(capsys):
    from cxrjax.train import recipes

    assert ra.main(["--model", "s0_c", "--list-cells"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert names == ["s0_c__none", "s0_c__cxr"] + [f"s0_c__cxr-{n}" for n in recipes.RECIPE_INGREDIENTS["cxr"]]
    assert ra.main(["--model", "s0_c", "--list-cells", "--add-one"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert names[-len(recipes.INGREDIENTS) :] == [f"s0_c__none+{n}" for n in recipes.INGREDIENTS]


def _synthetic_cell(name, accuracies, drop=()):
    runs = []
    for i, acc in enumerate(accuracies):
        fold, seed = divmod(i, 2)
        if (fold, seed) in drop:
            continue
        runs.append(
            {
                "fold": fold,
                "seed": seed,
                "accuracy": acc,
                "macro_f1": acc,
                "roc_auc": None,
                "center_blanked": 0.5,
                "center_only": acc - 0.1,
                "border_only": 0.5,
                "thorax_minus_full": -0.1,
            }
        )
    return {"name": name, "runs": runs, "failed": []}


def test_ablation_statistics_against_hand_computed_values():
    import itertools

    cells = ra.ablation_cells(["m"], BASE, None, add=False)
    assert [c.cv_cell.name for c in cells] == [
        "m__none",
        f"m__{BASE}",
        "m__none+class_weights",
        "m__none+label_smoothing",
    ]
    full = [0.90, 0.85, 0.80, 0.95, 0.88, 0.92]
    without_ls = [0.80, 0.84, 0.70, 0.90, 0.80, 0.93]  # clearly worse: label smoothing helps
    without_cw = [0.91, 0.83, 0.82, 0.94, 0.90, 0.90]  # about the same
    summary = [
        _synthetic_cell("m__none", [0.6, 0.7, 0.65, 0.62, 0.7, 0.66]),
        _synthetic_cell(f"m__{BASE}", full),
        _synthetic_cell("m__none+class_weights", without_ls),
        _synthetic_cell("m__none+label_smoothing", without_cw, drop={(2, 1)}),
    ]
    rows = {r["name"]: r for r in ra.ablation_table(cells, summary)}
    ci = mean_ci(full)
    m = rows[f"m__{BASE}"]["metrics"]["accuracy"]
    assert (m["mean"], m["low"], m["high"], m["n"]) == (
        pytest.approx(ci.mean),
        pytest.approx(ci.low),
        pytest.approx(ci.high),
        6,
    )
    assert rows[f"m__{BASE}"]["metrics"]["roc_auc"]["n"] == 0
    d_ls = rows["m__none+class_weights"]["differences"]["accuracy"]
    diffs = np.array(without_ls) - np.array(full)
    assert d_ls["n_pairs"] == 6 and d_ls["difference"] == pytest.approx(diffs.mean())
    assert d_ls["p"] == pytest.approx(sps.ttest_rel(without_ls, full).pvalue)
    null = [np.mean(np.array(s) * diffs) for s in itertools.product([-1, 1], repeat=6)]
    extreme = np.mean([abs(x) >= abs(diffs.mean()) - 1e-12 for x in null])
    assert d_ls["p_sign_flip"] == pytest.approx(extreme)  # exact sign flip over 2^6 patterns
    assert d_ls["ci95"][0] <= d_ls["difference"] <= d_ls["ci95"][1] < 0
    d_cw = rows["m__none+label_smoothing"]["differences"]["accuracy"]
    kept = [i for i in range(6) if i != 5]  # (fold 2, seed 1) is missing from that cell: unpaired, dropped
    assert d_cw["n_pairs"] == 5
    assert d_cw["p"] == pytest.approx(sps.ttest_rel([without_cw[i] for i in kept], [full[i] for i in kept]).pvalue)
    low, high = sorted([d_ls["p"], d_cw["p"]])
    assert min(d_ls["p_holm"], d_cw["p_holm"]) == pytest.approx(min(1.0, 2 * low))
    assert max(d_ls["p_holm"], d_cw["p_holm"]) == pytest.approx(max(min(1.0, 2 * low), high))
    assert d_ls["significant"] == (d_ls["p_holm"] < 0.05)
    # the thorax-only difference is paired the same way
    t = rows["m__none+class_weights"]["differences"]["center_only"]
    assert t["difference"] == pytest.approx(diffs.mean())
    none = rows["m__none"]["differences"]["accuracy"]
    assert none["reference"] == f"m__{BASE}" and none["p_holm"] == pytest.approx(none["p"])


def test_an_ingredient_that_changes_nothing_for_a_model_is_listed_not_trained(capsys):
    # S0's presets never flip and S3's do, so no_hflip is a no-op for s0_c only.
    assert ra.main(["--model", "s0_c,s3_lenet5", "--ingredients", "no_hflip", "--add-one", "--list-cells"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert {line.split()[0] for line in lines if "not trained" in line} == {"s0_c__cxr-no_hflip", "s0_c__none+no_hflip"}
    assert "(same settings as s0_c__cxr: not trained)" in next(x for x in lines if x.startswith("s0_c__cxr-no_hflip"))
    assert {"s3_lenet5__cxr-no_hflip", "s3_lenet5__none+no_hflip"} <= {line.split()[0] for line in lines}


class _Stop(Exception):
    pass


def test_a_no_op_row_is_not_trained_and_is_named_in_the_report(tmp_path, capsys, monkeypatch):
    seen = []

    def capture(args, cells, workdir, options):
        seen.extend(cell.name for cell in cells)
        raise _Stop

    monkeypatch.setattr(ra.cv, "prepare", capture)
    # s4_exp2 never flips: removing no_hflip from the base gives the base's own settings.
    with pytest.raises(_Stop):
        ra.main(ablation_args(tmp_path, base="none+no_hflip+label_smoothing", extra=()))
    assert seen == ["s4_exp2__none", "s4_exp2__none+no_hflip+label_smoothing", "s4_exp2__none+no_hflip"]
    assert (
        "note: s4_exp2__none+label_smoothing has the same settings as s4_exp2__none+no_hflip+label_smoothing "
        "for s4_exp2 (no_hflip changes nothing there): not trained"
    ) in capsys.readouterr().err

    meta = {
        "base_recipe": "none+no_hflip+label_smoothing",
        "folds": {"k": 2},
        "dataset": {"name": "cxr_phantoms"},
        "description": [],
        "seeds": [0],
        "cv_results": "results.json",
        "same_as_reference": [
            {
                "name": "s4_exp2__none+label_smoothing",
                "role": "leave_one_out",
                "ingredient": "no_hflip",
                "reference": "s4_exp2__none+no_hflip+label_smoothing",
            }
        ],
    }
    text = ra.write_ablation(tmp_path, [], meta)["markdown"].read_text()
    assert "- s4_exp2__none+label_smoothing (without no_hflip) = s4_exp2__none+no_hflip+label_smoothing" in text
