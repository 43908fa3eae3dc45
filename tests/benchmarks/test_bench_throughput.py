"""benchmarks.throughput / torch_reference / peaks: a tiny end-to-end run and the pieces.

One module-scoped smoke run (LeNet-5 at 32 px, global batch 8 on 1 device and on the 4
forced CPU devices, shard_map, two rounds of one timed step, PyTorch eager once at batch
8) feeds the schema, rounds and whole-host ratio checks; everything else is pure arithmetic on hand-made
inputs, or runs that stop before compiling. (The pmap wrapper is the same per-replica
step; it is left to the CLI to keep this file inside its time budget.)
"""

import json
from pathlib import Path

import pytest

from benchmarks import peaks, report, throughput, timing

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks/results"
OLD_CPU_RESULTS = RESULTS / "2026-11-22-cpu-2core.json"
SCHEMA_2_RESULTS = RESULTS / "2026-11-22-cpu-2core-whole-host.json"

RECORD_KEYS = {
    "model",
    "image_size",
    "dtype",
    "parallel",
    "num_devices",
    "per_device_batch",
    "global_batch",
    "device_kind",
    "platform",
    "device_count",
    "jax_version",
    "torch_version",
    "date",
    "compile_s",
    "eval_compile_s",
    "train_step_s",
    "images_per_s",
    "flops_per_step",
    "flops_per_step_per_device",
    "achieved_tflops",
    "peak_tflops",
    "peak_basis",
    "mfu",
    "xla_memory_bytes_per_device",
    "peak_device_memory_bytes",
    "eval_step_s",
    "eval_images_per_s",
    "parameters",
    "torch",
    "jax_over_torch",
    "eval_jax_over_torch",
    "error",
    "comparison",
    "rounds",
    "jax_over_torch_rounds",
}
STEP_KEYS = {"median_s", "min_s", "max_s", "p10_s", "p90_s", "steps", "spread"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("torch", reason="the PyTorch reference needs the optional extra: pip install -e .[torch]")
    out = tmp_path_factory.mktemp("throughput")
    result = throughput.main(
        [
            "--models",
            "lenet5@32",
            "--batch-sizes",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "2",
            "--parallel",
            "shard_map",
            "--torch-compile",
            "never",
            "--no-progress",
            "--json",
            str(out / "t.json"),
            "--markdown",
            str(out / "t.md"),
        ]
    )
    return result, out


def test_smoke_json_schema(smoke):
    result, out = smoke
    assert json.loads((out / "t.json").read_text()) == result
    assert result["schema"] == report.SCHEMA
    records = result["records"]
    assert [r["parallel"] for r in records] == ["shard_map", "shard_map"]
    # The CPU sweep's batch is global: 1 device at 8, and the 4 pytest devices at 2 each.
    assert [(r["num_devices"], r["per_device_batch"], r["global_batch"]) for r in records] == [(1, 8, 8), (4, 2, 8)]
    for r in records:
        assert r["error"] is None, r["error"]
        assert RECORD_KEYS <= set(r)
        assert STEP_KEYS <= set(r["train_step_s"]) and STEP_KEYS <= set(r["eval_step_s"])
        assert r["rounds"] == 2 and r["train_step_s"]["steps"] == 2  # pooled over the rounds
        assert r["eval_step_s"]["steps"] == 1  # eval is timed once
        assert r["comparison"] == "whole_host"
        assert r["platform"] == "cpu" and r["mfu"] is None and r["peak_tflops"] is None
        assert r["parameters"] == 61_196  # LeNet-5, 1 channel, K = 4 (cxrjax/models/lenet.py)
        assert r["images_per_s"] == pytest.approx(8 / r["train_step_s"]["median_s"])
        assert r["flops_per_step"] == pytest.approx(r["num_devices"] * r["flops_per_step_per_device"])
        assert r["flops_per_step_per_device"] > 0
        assert r["achieved_tflops"] == pytest.approx(r["flops_per_step"] / r["train_step_s"]["median_s"] / 1e12)


def test_smoke_torch_ratio(smoke):
    result, _ = smoke
    torch_keys = {"setup", "batch", "images_per_s", "train_step_s", "eval_images_per_s", "parameters", "notes"}
    one, four = result["records"]
    assert one["torch"] == four["torch"]  # PyTorch timed once per global batch
    for r in result["records"]:
        t = r["torch"]
        assert torch_keys <= set(t)
        assert t["setup"] == "cpu eager"  # --torch-compile never
        assert t["batch"] == 8
        assert t["parameters"] == r["parameters"]
        assert t["images_per_s"] == pytest.approx(8 / t["train_step_s"]["median_s"])
        assert t["rounds"] == 2 and t["train_step_s"]["steps"] == 2
        assert r["jax_over_torch"] == pytest.approx(r["images_per_s"] / t["images_per_s"])
        assert len(r["jax_over_torch_rounds"]) == 2 and all(x > 0 for x in r["jax_over_torch_rounds"])
        assert r["eval_jax_over_torch"] == pytest.approx(r["eval_images_per_s"] / t["eval_images_per_s"])


def test_smoke_markdown_has_a_row_per_record(smoke):
    result, out = smoke
    text = (out / "t.md").read_text()
    table, best = text.split("### Best JAX setup per model and global batch")
    rows = [line for line in table.splitlines() if line.startswith("| lenet5 |")]
    assert len(rows) == len(result["records"])
    for r, row in zip(result["records"], rows):
        assert row.startswith(
            f"| lenet5 | 32 | float32 | shard_map | {r['num_devices']} | {r['per_device_batch']} | 8 |"
        )
        lo, hi = min(r["jax_over_torch_rounds"]), max(r["jax_over_torch_rounds"])
        assert row.endswith(f"| {r['jax_over_torch']:.2f} ({lo:.2f}-{hi:.2f}) |")
    assert "host devices (one per core when dev > 1) / PyTorch img/s using all cores" in table
    fastest = max(result["records"], key=lambda r: r["images_per_s"])
    (best_row,) = [line for line in best.splitlines() if line.startswith("| lenet5 |")]
    assert best_row.startswith(f"| lenet5 | 32 | float32 | 8 | {fastest['num_devices']} | shard_map |")


@pytest.mark.parametrize("name,size", [("lenet5", 32), ("s4_exp4", 224)])
def test_torch_and_flax_parameter_counts_match(name, size):
    pytest.importorskip("torch", reason="the PyTorch reference needs the optional extra: pip install -e .[torch]")
    import jax
    import jax.numpy as jnp

    from benchmarks import torch_reference
    from cxrjax import models

    model = models.create(name, num_classes=3)
    x = jnp.zeros((1, size, size, models.MODELS[name].channels))
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
    flax_count = sum(a.size for a in jax.tree.leaves(shapes["params"]))
    torch_model = torch_reference.create(name, num_classes=3, image_size=size)
    assert torch_reference.count_parameters(torch_model) == flax_count


@pytest.mark.parametrize(
    "kind,dtype,expected",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 80GB HBM3", "float32", 494.7),
        ("NVIDIA H100 PCIe", "bfloat16", 756.5),
        ("NVIDIA H200", "bfloat16", 989.4),
        ("NVIDIA A100-SXM4-80GB", "float32", 156.0),
        ("NVIDIA A100-PCIE-40GB", "bfloat16", 312.0),
        ("cpu", "float32", None),
    ],
)
def test_peak_table(kind, dtype, expected):
    peak, basis = peaks.peak_tflops(kind, dtype)
    assert peak == expected
    assert basis
    assert peaks.mfu(98.94, peak) == (pytest.approx(98.94 / expected) if expected else None)


def test_step_time_summary():
    s = timing.summarize([0.5, 0.1, 0.4, 0.2, 0.3])
    assert (s.median_s, s.min_s, s.max_s, s.p10_s, s.p90_s, s.steps) == (0.3, 0.1, 0.5, 0.1, 0.5, 5)
    assert s.spread == pytest.approx((0.5 - 0.1) / 0.3)
    with pytest.raises(ValueError, match="at least one"):
        timing.summarize([])


def test_pooled_rounds_are_the_summary_of_all_their_steps():
    rounds = [timing.summarize([0.5, 0.1]), timing.summarize([0.4]), timing.summarize([0.2, 0.3])]
    assert timing.pooled(rounds) == timing.summarize([0.5, 0.1, 0.4, 0.2, 0.3])
    assert timing.pooled(rounds).median_s == 0.3


def test_retimer_warms_up_carries_state_and_records_each_round():
    calls = []
    retimer = timing.Retimer(
        lambda s: s + 1, 0, sync=lambda s: None, rounds=[timing.summarize([1.0])], before=lambda: calls.append("before")
    )
    times = retimer(3)
    assert retimer.state == 4  # one untimed step, then three timed
    assert times.steps == 3 and retimer.rounds[-1] is times and len(retimer.rounds) == 2
    assert calls == ["before"]


class _ScriptedRetimer:
    """A retimer whose rounds take the given times, logging the order it is called in."""

    def __init__(self, name, times, log):
        self.name, self.rounds, self.pending, self.log = name, [timing.summarize([times[0]])], list(times[1:]), log

    def __call__(self, steps):
        self.log.append(self.name)
        self.rounds.append(timing.summarize([self.pending.pop(0)] * steps))
        return self.rounds[-1]


def test_rounds_alternate_frameworks_and_pool_the_step_times():
    log = []
    extra = dict(rounds=1, peak_tflops=None, flops_per_step_per_device=1e9, eval_images_per_s=100.0)
    one, four = _record(1, 8 / 0.1, **extra), _record(4, 8 / 0.1, **extra)
    torch_json = {**_fake_torch(8 / 0.2, 100.0), "rounds": 1}
    timed = [
        (one, _ScriptedRetimer("jax1", [0.1, 0.2, 0.4], log)),
        (four, _ScriptedRetimer("jax4", [0.1, 0.1, 0.1], log)),
    ]
    torch_retimer = _ScriptedRetimer("torch", [0.2, 0.4, 0.2], log)
    throughput.time_rounds(timed, torch_json, torch_retimer, rounds=3, steps=2)
    assert log == ["jax1", "jax4", "torch", "jax1", "jax4", "torch"]
    # Pooled: JAX n=1 steps 0.1, 0.2, 0.2, 0.4, 0.4 -> median 0.2; torch 0.2, 0.4, 0.4, 0.2, 0.2 -> 0.2.
    assert one["rounds"] == 3 and one["train_step_s"]["steps"] == 5
    assert one["train_step_s"]["median_s"] == pytest.approx(0.2) and one["images_per_s"] == pytest.approx(40.0)
    assert one["achieved_tflops"] == pytest.approx(1e9 / 0.2 / 1e12)
    assert torch_json["rounds"] == 3 and torch_json["images_per_s"] == pytest.approx(40.0)
    assert one["jax_over_torch"] == pytest.approx(1.0)
    # Within each round: (8 / jax s) / (8 / torch s).
    assert one["jax_over_torch_rounds"] == pytest.approx([0.2 / 0.1, 0.4 / 0.2, 0.2 / 0.4])
    assert four["jax_over_torch_rounds"] == pytest.approx([2.0, 4.0, 2.0])
    assert four["jax_over_torch"] == pytest.approx((8 / 0.1) / 40.0)
    assert report.ratio_text(one) == "1.00 (0.50-2.00)"


def test_data_parallel_overhead_rows():
    def rec(batch, seconds):
        return {
            "model": "m",
            "image_size": 8,
            "dtype": "float32",
            "parallel": "shard_map",
            "per_device_batch": batch,
            "train_step_s": {"median_s": seconds},
            "error": None,
        }

    runs = {1: [rec(2, 0.010), rec(8, 0.030)], 4: [rec(2, 0.050)]}
    (row,) = throughput.overhead_rows(runs, (2,))
    assert row["num_devices"] == 4 and row["per_device_batch"] == 2
    assert row["ratio_same_per_device_batch"] == pytest.approx(5.0)
    assert row["step_ms_1_same_total"] == pytest.approx(30.0)
    assert row["ratio_same_total_batch"] == pytest.approx(0.05 / 0.03)
    assert "| m | 8 | float32 | shard_map | 2 | 4 |" in report.overhead_table([row])


def test_devices_mode_helpers():
    argv = ["--models", "lenet5", "--devices", "1,4", "--json=x.json", "--steps", "2"]
    assert throughput._strip_args(argv, ("--devices", "--json")) == ["--models", "lenet5", "--steps", "2"]
    env = throughput._forced_env(3)
    assert env["XLA_FLAGS"].split().count("--xla_force_host_platform_device_count=3") == 1
    assert "--xla_force_host_platform_device_count=4" not in env["XLA_FLAGS"]
    assert env["JAX_PLATFORMS"] == "cpu"  # the subprocess gets global batches, a CPU-sweep notion


def test_devices_mode_passes_global_batches_per_device_count(monkeypatch):
    """Each subprocess times one forced count at per-device batch x n; the join stays per-device."""
    cmds = []

    def fake_run(cmd, env, check):
        cmds.append(cmd)
        n = int(cmd[cmd.index("--device-counts") + 1])
        assert f"--xla_force_host_platform_device_count={n}" in env["XLA_FLAGS"]
        records = [
            {
                "model": "lenet5",
                "image_size": 32,
                "dtype": "float32",
                "parallel": "shard_map",
                "num_devices": n,
                "per_device_batch": g // n,
                "global_batch": g,
                "error": None,
                "train_step_s": {"median_s": 0.001 * g},
            }
            for g in throughput._ints(cmd[cmd.index("--batch-sizes") + 1])
        ]
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"records": records}))

    monkeypatch.setattr(throughput.subprocess, "run", fake_run)
    argv = ["--models", "lenet5@32", "--batch-sizes", "4", "--devices", "2", "--num-devices", "3", "--steps", "1"]
    options = throughput.BenchOptions(batch_sizes=(4,))
    records, rows = throughput.run_devices(argv, [2], options)
    args = [(c[c.index("--device-counts") + 1], c[c.index("--batch-sizes") + 1]) for c in cmds]
    assert args == [("1", "4,8"), ("2", "8")]  # 1 device also at the 2 x 4 total
    assert all(c.count("--batch-sizes") == 1 and "--num-devices" not in c for c in cmds)
    assert len(records) == 3
    (row,) = rows
    assert (row["num_devices"], row["per_device_batch"]) == (2, 4)
    assert (row["step_ms_1"], row["step_ms_n"], row["step_ms_1_same_total"]) == pytest.approx((4.0, 8.0, 8.0))


def test_device_counts_default_to_one_and_all_on_cpu():
    opts = throughput.BenchOptions
    assert throughput.device_counts(opts(), on_cpu=True, local=4) == (1, 4)
    assert throughput.device_counts(opts(), on_cpu=True, local=1) == (1,)
    assert throughput.device_counts(opts(), on_cpu=False, local=8) == (8,)
    assert throughput.device_counts(opts(num_devices=2), on_cpu=True, local=4) == (2,)
    assert throughput.device_counts(opts(device_counts=(2, 4)), on_cpu=True, local=4) == (2, 4)


def test_batch_split_is_global_on_cpu_and_per_device_on_gpu():
    assert throughput.batch_split(8, 4, on_cpu=True) == (2, 8)
    assert throughput.batch_split(8, 1, on_cpu=True) == (8, 8)
    assert throughput.batch_split(6, 4, on_cpu=True) == (None, 6)
    assert throughput.batch_split(8, 4, on_cpu=False) == (8, 32)


def test_indivisible_global_batch_is_an_error_record_and_the_sweep_goes_on():
    seen = []
    options = throughput.BenchOptions(
        cases=[throughput.BenchCase("lenet5", 32, (6,), (6,))],
        batch_sizes=(6, 10),
        device_counts=(4,),
        steps=1,
        warmup=0,
        torch=False,
        progress=False,
        on_record=lambda records: seen.append(len(records)),
    )
    records = throughput.run(options)  # nothing divides: fails before compiling anything
    assert seen == [1, 2]
    assert [r["error"] for r in records] == [
        "global batch 6 is not divisible by 4 devices",
        "global batch 10 is not divisible by 4 devices",
    ]
    r = records[0]
    assert (r["num_devices"], r["per_device_batch"], r["global_batch"], r["comparison"]) == (4, None, 6, "whole_host")
    assert r["torch"] is None and r["jax_over_torch"] is None
    assert "| lenet5 | 32 | float32 | shard_map | 4 | - | 6 | failed: global batch 6" in report.markdown_table(records)


def _fake_torch(images_per_s, eval_images_per_s):
    return {"setup": "cpu eager", "batch": 8, "images_per_s": images_per_s, "eval_images_per_s": eval_images_per_s}


@pytest.mark.parametrize(
    "comparison,expected,expected_eval",
    [
        ("whole_host", 400.0 / 100.0, 1000.0 / 200.0),  # global img/s / torch img/s
        ("per_device", 400.0 / 4 / 100.0, 1000.0 / 4 / 200.0),  # per device / torch on one device
    ],
)
def test_jax_over_torch_by_comparison(comparison, expected, expected_eval):
    record = {
        "comparison": comparison,
        "num_devices": 4,
        "images_per_s": 400.0,
        "eval_images_per_s": 1000.0,
        "error": None,
    }
    torch_result = _fake_torch(100.0, 200.0)
    throughput.attach_torch(record, torch_result)
    assert record["torch"] is torch_result
    assert record["jax_over_torch"] == pytest.approx(expected)
    assert record["eval_jax_over_torch"] == pytest.approx(expected_eval)


def test_cpu_devices_flag_is_added_only_when_absent():
    env = {}
    throughput.force_host_devices(env, 3)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    throughput.force_host_devices(env, 2)
    assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=7"}
    throughput.force_host_devices(env, 2)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=7"  # the user's count wins


def test_num_devices_and_device_counts_exclude_each_other():
    with pytest.raises(SystemExit):
        throughput.main(["--num-devices", "2", "--device-counts", "1,2", "--no-progress"])


def _record(n, images_per_s, comparison="whole_host", **extra):
    return {
        "model": "m",
        "image_size": 8,
        "dtype": "float32",
        "parallel": "shard_map",
        "num_devices": n,
        "per_device_batch": 8 // n,
        "global_batch": 8,
        "comparison": comparison,
        "error": None,
        "images_per_s": images_per_s,
        "torch": _fake_torch(50.0, 100.0),
        "jax_over_torch": images_per_s / 50.0,
        **extra,
    }


def test_best_setup_table_picks_the_fastest_device_count():
    table = report.best_setup_table([_record(1, 20.0), _record(2, 30.0)])
    assert "| m | 8 | float32 | 8 | 2 | shard_map | 30.0 | 50.0 | 0.60 |" in table
    assert report.best_setup_table([_record(1, 20.0)]) == ""  # one device count: nothing to choose
    assert report.best_setup_table([_record(1, 20.0, "per_device"), _record(2, 30.0, "per_device")]) == ""


def test_schema_1_records_render():
    old = json.loads(OLD_CPU_RESULTS.read_text())
    assert old["schema"] == "cxrjax.benchmarks.throughput/1"
    text = report.markdown_table(old["records"])
    rows = [line for line in text.splitlines() if line.startswith("| lenet5 |") or line.startswith("| vgg16")]
    assert rows[0].startswith("| lenet5 | 32 | float32 | shard_map | 1 | 32 | 32 |")
    assert "jax/torch: JAX img/s per device / PyTorch img/s on one device" in text  # no comparison: per device
    assert "host devices" not in text and "Best JAX setup" not in text
    # A schema /1 error record had neither global_batch nor comparison.
    failed = {k: v for k, v in old["records"][0].items() if k not in ("global_batch",)}
    failed.update(num_devices=2, per_device_batch=4, error="RuntimeError: out of memory")
    assert "| lenet5 | 32 | float32 | shard_map | 2 | 4 | 8 | failed: RuntimeError" in report.markdown_table([failed])


def test_schema_2_records_render_with_one_round():
    old = json.loads(SCHEMA_2_RESULTS.read_text())
    assert old["schema"] == "cxrjax.benchmarks.throughput/2"
    text = report.markdown_table(old["records"])
    first = old["records"][0]
    assert (first["model"], first["num_devices"], first["global_batch"]) == ("lenet5", 1, 32)
    (row,) = [line for line in text.splitlines() if line.startswith("| lenet5 | 32 | float32 | shard_map | 1 | 32 |")]
    assert row.endswith(f"| {first['jax_over_torch']:.2f} |")  # one round: no per-round range
    assert "Rounds:" not in text


def test_model_list_parsing():
    cases = throughput.expand_cases(["s4_exp4", "vgg16@224", "s0_b"])
    assert [c.label for c in cases] == ["s4_exp4@128", "s4_exp4@224", "vgg16@224", "s0_b@150"]
    with pytest.raises(SystemExit, match="unknown model"):
        throughput.expand_cases(["resnet"])
