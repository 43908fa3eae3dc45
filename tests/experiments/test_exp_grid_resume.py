"""experiments.grid + experiments.report with a fake run function: resume, skip, refuse a
changed config, record failures, and write every report file with the right numbers."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from experiments import grid, report


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    cell: str
    seed: int
    epochs: int = 2


# test accuracy per (cell, seed): "a" and "b" train different networks, "a_es" is "a"'s
# network with another training option (paired with "a" by seed).
ACC = {
    ("a", 0): 0.50,
    ("a", 1): 0.60,
    ("b", 0): 0.80,
    ("b", 1): 0.90,
    ("a_es", 0): 0.55,
    ("a_es", 1): 0.62,
    ("a", 2): 0.55,
    ("b", 2): 0.85,
    ("a_es", 2): 0.56,
}
CELLS = [
    grid.Cell("a", "A", {"bn": "none", "es": "off"}, network="net_a", reference=0.479, reference_name="Exp2"),
    grid.Cell("b", "B", {"bn": "all", "es": "off"}, network="net_b"),
    grid.Cell("a_es", "A+ES", {"bn": "none", "es": "on"}, network="net_a"),
]


class FakeRun:
    def __init__(self, fail=()):
        self.calls: list[tuple[str, int]] = []
        self.fail = set(fail)

    def __call__(self, config: FakeConfig, workdir: str) -> dict:
        self.calls.append((config.cell, config.seed))
        if (config.cell, config.seed) in self.fail:
            raise FloatingPointError("non-finite loss at step 3")
        acc = ACC[(config.cell, config.seed)]
        lines = [
            {"epoch": e, "train_accuracy": acc + 0.1 * e / config.epochs, "validation_accuracy": acc - 0.01 * (2 - e)}
            for e in (1, 2)
        ]
        Path(workdir, "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        cm = [[6, 0], [2, 2]]  # majority class = 6 of 10
        return {
            "test": {"accuracy": acc, "macro_f1": acc - 0.05, "confusion_matrix": cm},
            "best_epoch": 2,
            "epochs_run": 2,
        }


def specs(cells=("a", "b", "a_es"), seeds=(0, 1), epochs=2):
    return [grid.RunSpec(c, s, FakeConfig(c, s, epochs)) for c in cells for s in seeds]


def test_second_invocation_trains_nothing(tmp_path):
    fake = FakeRun()
    first = grid.run_grid(specs(), tmp_path, fake, progress=False)
    assert len(fake.calls) == 6 and grid.trained_count(first) == 6
    again = FakeRun()
    second = grid.run_grid(specs(), tmp_path, again, progress=False)
    assert again.calls == []
    assert grid.trained_count(second) == 0
    assert [r.results["test"]["accuracy"] for r in second] == [r.results["test"]["accuracy"] for r in first]
    assert all(r.wall_time_s is not None for r in second)  # read back from grid_run.json
    # More seeds in the same workdir: only the new runs train.
    more = FakeRun()
    grid.run_grid(specs(seeds=(0, 1, 2)), tmp_path, more, progress=False)
    assert sorted(more.calls) == [("a", 2), ("a_es", 2), ("b", 2)]


def test_interrupted_run_is_handed_back_to_the_engine(tmp_path):
    done = specs(cells=("a",))
    grid.run_grid(done, tmp_path, FakeRun(), progress=False)
    # "b" seed 0 was killed mid-training: config written, a checkpoint, no results.json.
    killed = grid.run_dir_for(tmp_path, "b", 0)
    grid.check_config(killed, FakeConfig("b", 0))
    (killed / "checkpoints" / "3").mkdir(parents=True)
    fake = FakeRun()
    records = grid.run_grid(specs(cells=("a", "b"), seeds=(0,)), tmp_path, fake, progress=False)
    assert fake.calls == [("b", 0)]
    assert (killed / "checkpoints" / "3").is_dir()  # nothing of the engine's was removed
    assert json.loads((killed / "grid_run.json").read_text())["resumed"] is True
    assert [r.trained for r in records] == [False, True]


def test_changed_config_is_refused_before_any_training(tmp_path):
    grid.run_grid(specs(cells=("a",), seeds=(0,)), tmp_path, FakeRun(), progress=False)
    fake = FakeRun()
    with pytest.raises(grid.ConfigMismatchError, match=r"epochs: saved 2, now 5") as err:
        grid.run_grid(specs(cells=("b", "a"), seeds=(0,), epochs=5), tmp_path, fake, progress=False)
    assert "--workdir" in str(err.value) and str(grid.run_dir_for(tmp_path, "a", 0)) in str(err.value)
    assert fake.calls == []


def test_failed_run_is_recorded_reported_and_retried(tmp_path):
    fake = FakeRun(fail={("b", 1)})
    records = grid.run_grid(specs(cells=("a", "b")), tmp_path, fake, progress=False)
    bad = [r for r in records if not r.ok]
    assert [(r.cell, r.seed) for r in bad] == [("b", 1)]
    assert "non-finite loss" in (bad[0].run_dir / "grid_error.txt").read_text()
    files, summary = report.write_report(tmp_path, CELLS[:2], records, title="t")
    rows = list(csv.DictReader(files.csv.open()))
    assert rows[3]["status"].startswith("failed: FloatingPointError") and rows[3]["test_accuracy"] == ""
    assert "1 run(s) failed" in summary
    retry = FakeRun()
    records = grid.run_grid(specs(cells=("a", "b")), tmp_path, retry, progress=False)
    assert retry.calls == [("b", 1)] and all(r.ok for r in records)
    assert not (grid.run_dir_for(tmp_path, "b", 1) / "grid_error.txt").exists()


def test_report_files_and_numbers(tmp_path):
    records = grid.run_grid(specs(), tmp_path, FakeRun(), progress=False)
    files, summary = report.write_report(
        tmp_path,
        CELLS,
        records,
        title="Fake grid",
        claims=[report.Claim("b", "a", "BN helps")],
        reference_source="S4",
    )
    for path in files.all():
        assert path.exists() and path.stat().st_size > 0, path
    rows = list(csv.DictReader(files.csv.open()))
    assert [(r["cell"], r["seed"]) for r in rows] == [(s.cell, str(s.seed)) for s in specs()]
    assert float(rows[0]["test_accuracy"]) == 0.50
    # gap at best epoch 2: train 0.5 + 0.1 - validation 0.5 = 0.1
    assert float(rows[0]["train_val_gap"]) == pytest.approx(0.1)
    cs = report.cell_stats(CELLS, [report.run_row(r) for r in records])
    assert cs[0].accuracy.mean == pytest.approx(0.55) and cs[1].accuracy.mean == pytest.approx(0.85)
    comps = report.comparisons(CELLS, [report.run_row(r) for r in records])
    # a vs b differ in bn (different networks: Welch); a vs a_es in es (same network: paired);
    # b vs a_es differ in two factors: not compared.
    assert [(c.a.name, c.b.name, c.factor, c.result.test) for c in comps] == [
        ("b", "a", "bn", "welch"),
        ("a_es", "a", "es", "paired"),
    ]
    assert comps[0].result.difference == pytest.approx(0.30)
    assert comps[1].result.difference == pytest.approx(0.035)  # mean of 0.05 and 0.02
    md = files.markdown.read_text()
    assert "| A | none | off | 2 | 55.0 [" in md and "47.9 (Exp2)" in md
    assert "Majority-class rate of the test set: 60.0%" in md
    assert 'Claim "BN helps"' in summary and "+30.0 pts" in summary
    assert "different dataset" in summary  # references_comparable defaults to False


def test_parallel_workers_give_the_same_records(tmp_path):
    grouped = [dataclasses.replace(s, group=s.cell) for s in specs()]
    parallel = grid.run_grid(
        grouped, tmp_path / "par", FakeRun(), progress=False, jobs=2, worker_env={"CXRJAX_FAKE_WORKER": "1"}
    )
    serial = grid.run_grid(specs(), tmp_path / "ser", FakeRun(), progress=False)
    assert [(r.cell, r.seed, r.results, r.trained) for r in parallel] == [
        (r.cell, r.seed, r.results, r.trained) for r in serial
    ]
    assert all(
        (r.run_dir / "results.json").exists() and r.run_dir.parent.parent.parent == tmp_path / "par" for r in parallel
    )
    assert grid.trained_count(grid.run_grid(grouped, tmp_path / "par", FakeRun(), progress=False, jobs=2)) == 0


def test_grid_run_folders_follow_the_engines_contract(tmp_path):
    """The grid writes and checks the engine's config.json with the engine's rule: fields
    that cannot change results (data_dir, progress...) may differ, others are refused
    with the engine's ConfigMismatchError."""
    from cxrjax.train import TrainConfig
    from cxrjax.train import workdir as files

    def run(config, workdir):
        return {"test": {"accuracy": 0.5}, "epochs_run": config.epochs}

    config = TrainConfig(epochs=1, seed=0)
    grid.run_grid([grid.RunSpec("a", 0, config)], tmp_path, run, progress=False)
    run_dir = grid.run_dir_for(tmp_path, "a", 0)
    assert TrainConfig.from_json_file(run_dir / files.CONFIG_FILE) == config
    moved = config.replace(data_dir="/elsewhere", progress=False)
    assert grid.trained_count(grid.run_grid([grid.RunSpec("a", 0, moved)], tmp_path, run, progress=False)) == 0
    with pytest.raises(files.ConfigMismatchError, match="lr: saved 0.001, now 0.1"):
        grid.run_grid([grid.RunSpec("a", 0, config.replace(lr=0.1))], tmp_path, run, progress=False)
    assert grid.ConfigMismatchError is files.ConfigMismatchError


CLAIM_KEYS = {
    "claim",
    "a",
    "b",
    "paired",
    "difference",
    "ci95",
    "p",
    "p_permutation",
    "p_holm",
    "prob_improvement",
    "significant",
}


def test_summary_json_claims_family_and_values(tmp_path):
    from scipy.stats import ttest_ind, ttest_rel

    records = grid.run_grid(specs(seeds=(0, 1, 2)), tmp_path, FakeRun(), progress=False)
    claims = [report.Claim("b", "a", "BN helps"), report.Claim("a_es", "a", "ES helps"), report.Claim("x", "a", "gone")]
    files, _ = report.write_report(tmp_path, CELLS, records, title="Fake grid", claims=claims)

    def refuse(constant):  # strict JSON: no NaN / Infinity
        raise ValueError(constant)

    out = json.loads(files.summary_json.read_text(), parse_constant=refuse)
    assert (out["runs"], out["seeds"]) == (9, 3)
    assert "family of the 2 published claim(s)" in out["family"]  # the claim on an absent cell is not in the family
    bn, es = out["claims"]
    assert CLAIM_KEYS <= set(bn) and CLAIM_KEYS <= set(es)
    a = [ACC[("a", s)] for s in (0, 1, 2)]
    # b - a: different networks -> Welch, and the two-sample permutation test: the observed
    # split is the most extreme of C(6, 3) = 20, so p = 2/20; every b run beats every a run.
    assert (bn["claim"], bn["a"], bn["b"], bn["paired"]) == ("BN helps", "b", "a", False)
    assert bn["difference"] == pytest.approx(0.30)
    assert bn["p"] == pytest.approx(ttest_ind([ACC[("b", s)] for s in (0, 1, 2)], a, equal_var=False).pvalue)
    assert bn["p_permutation"] == pytest.approx(0.1) and bn["prob_improvement"] == 1.0
    # a_es - a: same network -> paired over seeds; 3 positive differences: sign-flip p = its floor 2/2^3
    es_acc = [ACC[("a_es", s)] for s in (0, 1, 2)]
    assert es["paired"] is True and es["difference"] == pytest.approx((0.05 + 0.02 + 0.01) / 3)
    assert es["p"] == pytest.approx(ttest_rel(es_acc, a).pvalue)
    assert es["p_permutation"] == pytest.approx(0.25) and es["p_permutation_floor"] == pytest.approx(0.25)
    assert es["ci95"][0] <= es["difference"] <= es["ci95"][1]
    # Holm over the 2 claims: the smaller p doubled, the larger kept (monotone)
    assert bn["p_holm"] == pytest.approx(2 * bn["p"]) and es["p_holm"] == pytest.approx(max(es["p"], 2 * bn["p"]))
    assert (bn["significant"], es["significant"]) == (True, False)
    assert [c["factor"] for c in out["comparisons"]] == ["bn", "es"]
    summary_md = files.summary.read_text()
    assert "| BN helps | B - A |" in summary_md and "2/2^n (n=3: 0.25)" in summary_md


def test_timing_summary_means_phases_and_time_outside_the_engine(tmp_path):
    def record(seed, timings, wall):
        results = {"test": {"accuracy": 0.5}, "timings": timings}
        return grid.RunRecord("a", seed, tmp_path, results, wall, trained=True)

    records = [
        record(0, {"train": 2.0, "plots": 0.0, "total": 5.0}, 6.0),
        record(1, {"train": 4.0, "plots": 1.0, "total": 7.0}, 7.5),
        grid.RunRecord("a", 2, tmp_path, {"test": {}}, 3.0, trained=False),  # no timings (older run)
        grid.RunRecord("a", 3, tmp_path, {}, None, trained=True, error="boom"),
    ]
    out = report.timing_summary(records)
    assert out["runs"] == 2
    assert out["mean_s"] == {"train": 3.0, "plots": 0.5, "total": 6.0, "outside_engine": 0.75}
    assert "| train | 3.00 | 50% |" in report.timing_table(out)
    assert report.timing_summary(records[2:]) == {"runs": 0, "mean_s": {}}


def test_a_continued_run_is_scheduled_after_its_prefix_in_its_group():
    specs = [
        grid.RunSpec("plain", 0, FakeConfig("plain", 0), continues="es"),
        grid.RunSpec("other", 0, FakeConfig("other", 0)),
        grid.RunSpec("es", 0, FakeConfig("es", 0)),
        grid.RunSpec("plain", 1, FakeConfig("plain", 1), continues="es"),  # its prefix is not in this call
    ]
    groups = grid._groups(specs)
    # round-robin over the cells the groups start with: other, es (with its twin), plain
    assert [[(s.cell, s.seed) for s in g] for g in groups] == [
        [("other", 0)],
        [("es", 0), ("plain", 0)],
        [("plain", 1)],
    ]


def test_groups_are_handed_out_round_robin_over_cells():
    specs = [grid.RunSpec(cell, seed, FakeConfig(cell, seed)) for cell in ("a", "b", "c") for seed in range(3)]
    specs = specs[:-1]  # c has two seeds
    order = [(g[0].cell, g[0].seed) for g in grid._groups(specs)]
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1), ("a", 2), ("b", 2)]


def test_claims_are_judged_in_their_direction_and_no_difference_by_equivalence(tmp_path):
    from scipy.stats import ttest_1samp, ttest_rel

    records = grid.run_grid(specs(seeds=(0, 1, 2)), tmp_path, FakeRun(), progress=False)
    claims = [
        report.Claim("b", "a", "B beats A"),
        report.Claim("b", "a", "B is below A", expect="<"),
        report.Claim("a_es", "a", "ES changes nothing (within 10 pts)", expect="=", margin=0.10),
        report.Claim("a_es", "a", "ES changes nothing (within 0.5 pts)", expect="=", margin=0.005),
    ]
    files, _ = report.write_report(tmp_path, CELLS, records, title="Fake grid", claims=claims)
    out = json.loads(files.summary_json.read_text())
    beats, below, within10, within05 = out["claims"]
    # b - a = +30 points, Welch p ~0.002 (Holm-significant): supports ">" and contradicts "<"
    assert beats["p"] == below["p"] and beats["significant"] and below["significant"]
    assert (beats["verdict"], below["verdict"]) == ("supported", "contradicted")
    assert (beats["supported"], below["supported"]) == (True, False)
    # a_es - a per seed: +5, +2, +1 points. Within 10 points: the TOST's larger one-sided p.
    d = [ACC[("a_es", s)] - ACC[("a", s)] for s in (0, 1, 2)]
    tost = max(ttest_1samp(d, -0.10, alternative="greater").pvalue, ttest_1samp(d, 0.10, alternative="less").pvalue)
    assert within10["p"] == pytest.approx(tost) and within10["margin"] == 0.10
    es = [ACC[("a_es", s)] for s in (0, 1, 2)]
    assert within10["p_difference"] == pytest.approx(ttest_rel(es, [ACC[("a", s)] for s in (0, 1, 2)]).pvalue)
    assert "TOST" in within10["test"] and within10["expectation"] == "A = B within 10 pts"
    # Holm over the 4 claims' own p's: [p_b, p_b, tost, ~1] -> tost's rank 3 of 4: doubled
    assert within10["p_holm"] == pytest.approx(max(2 * tost, 3 * beats["p"])) and within10["verdict"] == "supported"
    # within 0.5 points: every seed differs by more, the whole interval lies above the margin
    assert not within05["significant"] and within05["ci95"][0] > 0.005 and within05["verdict"] == "contradicted"
    assert (out["supported"], out["contradicted"]) == (2, 2)
    summary_md = files.summary.read_text()
    assert "Published claims: 2 of 4 supported after Holm's correction over the 4 claims, 2 contradicted" in summary_md
    assert "| B is below A | B - A | A < B |" in summary_md
    with pytest.raises(ValueError, match="expect='~' is not one of"):
        report.Claim("b", "a", "bad", expect="~")
