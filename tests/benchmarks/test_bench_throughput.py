"""benchmarks.throughput / torch_reference / peaks: a tiny end-to-end run and the pieces.

One module-scoped smoke run (LeNet-5 at 32 px, 2 images per device on the 4 forced CPU
devices, shard_map, one timed step, PyTorch eager) feeds the schema and ratio checks;
everything else is pure arithmetic on hand-made inputs. (The pmap wrapper is the same
per-replica step; it is left to the CLI to keep this file inside its time budget.)
"""
import json

import pytest

from benchmarks import peaks, report, throughput, timing

RECORD_KEYS = {
    "model", "image_size", "dtype", "parallel", "num_devices", "per_device_batch", "global_batch",
    "device_kind", "platform", "device_count", "jax_version", "torch_version", "date",
    "compile_s", "eval_compile_s", "train_step_s", "images_per_s", "flops_per_step",
    "flops_per_step_per_device", "achieved_tflops", "peak_tflops", "peak_basis", "mfu",
    "xla_memory_bytes_per_device", "peak_device_memory_bytes", "eval_step_s", "eval_images_per_s",
    "parameters", "torch", "jax_over_torch", "eval_jax_over_torch", "error",
}
STEP_KEYS = {"median_s", "min_s", "max_s", "p10_s", "p90_s", "steps", "spread"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("torch", reason="the PyTorch reference needs the optional extra: pip install -e .[torch]")
    out = tmp_path_factory.mktemp("throughput")
    result = throughput.main([
        "--models", "lenet5@32", "--batch-sizes", "2", "--steps", "1", "--warmup", "0",
        "--parallel", "shard_map", "--torch-compile", "never", "--no-progress",
        "--json", str(out / "t.json"), "--markdown", str(out / "t.md"),
    ])
    return result, out


def test_smoke_json_schema(smoke):
    result, out = smoke
    assert json.loads((out / "t.json").read_text()) == result
    assert result["schema"] == report.SCHEMA
    records = result["records"]
    assert [r["parallel"] for r in records] == ["shard_map"]
    for r in records:
        assert r["error"] is None, r["error"]
        assert RECORD_KEYS <= set(r)
        assert STEP_KEYS <= set(r["train_step_s"]) and STEP_KEYS <= set(r["eval_step_s"])
        assert r["train_step_s"]["steps"] == 1
        assert (r["num_devices"], r["per_device_batch"], r["global_batch"]) == (4, 2, 8)
        assert r["platform"] == "cpu" and r["mfu"] is None and r["peak_tflops"] is None
        assert r["parameters"] == 61_196  # LeNet-5, 1 channel, K = 4 (cxrjax/models/lenet.py)
        assert r["images_per_s"] == pytest.approx(8 / r["train_step_s"]["median_s"])
        assert r["flops_per_step"] == pytest.approx(4 * r["flops_per_step_per_device"])
        assert r["flops_per_step_per_device"] > 0
        assert r["achieved_tflops"] == pytest.approx(r["flops_per_step"] / r["train_step_s"]["median_s"] / 1e12)


def test_smoke_torch_ratio(smoke):
    result, _ = smoke
    torch_keys = {"setup", "images_per_s", "train_step_s", "eval_images_per_s", "parameters", "notes"}
    for r in result["records"]:
        t = r["torch"]
        assert torch_keys <= set(t)
        assert t["setup"] == "cpu eager"  # --torch-compile never
        assert t["parameters"] == r["parameters"]
        assert t["images_per_s"] == pytest.approx(2 / t["train_step_s"]["median_s"])
        assert r["jax_over_torch"] == pytest.approx(r["images_per_s"] / 4 / t["images_per_s"])
        assert r["eval_jax_over_torch"] == pytest.approx(r["eval_images_per_s"] / 4 / t["eval_images_per_s"])


def test_smoke_markdown_has_a_row_per_record(smoke):
    result, out = smoke
    rows = [line for line in (out / "t.md").read_text().splitlines() if line.startswith("| lenet5 |")]
    assert len(rows) == len(result["records"])
    assert all(f"| {r['jax_over_torch']:.2f} |" in row for r, row in zip(result["records"], rows))


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


@pytest.mark.parametrize("kind,dtype,expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "float32", 156.0),
    ("NVIDIA A100-PCIE-40GB", "bfloat16", 312.0),
    ("cpu", "float32", None),
])
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


def test_data_parallel_overhead_rows():
    def rec(batch, seconds):
        return {"model": "m", "image_size": 8, "dtype": "float32", "parallel": "shard_map",
                "per_device_batch": batch, "train_step_s": {"median_s": seconds}, "error": None}

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


def test_model_list_parsing():
    cases = throughput.expand_cases(["s4_exp4", "vgg16@224", "s0_b"])
    assert [c.label for c in cases] == ["s4_exp4@128", "s4_exp4@224", "vgg16@224", "s0_b@150"]
    with pytest.raises(SystemExit, match="unknown model"):
        throughput.expand_cases(["resnet"])
