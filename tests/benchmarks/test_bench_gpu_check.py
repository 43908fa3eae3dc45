"""benchmarks/gpu_check.sh and its driver benchmarks/gpu_check.py.

Fast tests of the driver's step runner (a failing, a hanging and an out-of-budget step
are recorded and the others still run; nothing is overwritten), of its readers and of
the shell script's user errors; and one ``slow`` smoke run of the whole check on the CPU
(``--cpu-smoke``: every step at tiny sizes; deselect with ``-m 'not slow'``).
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.throughput import DEFAULT_CASES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PY = sys.executable


def _py(code):
    return [PY, "-c", code]


def test_failing_hanging_and_unreadable_steps_are_recorded_and_the_rest_still_runs(tmp_path):
    def unreadable():
        raise ValueError("no such file")

    steps = [
        gpu_check.Step("fails", _py("import sys; print('boom'); sys.exit(3)"), 60),
        gpu_check.Step("hangs", _py("import time; print('started', flush=True); time.sleep(60)"), 2),
        gpu_check.Step("unreadable", _py("print('fine')"), 60, collect=unreadable),
        gpu_check.Step("not_here", _py("raise SystemExit(1)"), 60, skip_reason="its module does not exist"),
        gpu_check.Step("ok", _py("import os; print(os.environ['X'])"), 60, env={"X": "from-the-step"}),
    ]
    log = io.StringIO()
    start = time.monotonic()
    results = gpu_check.run_steps(steps, budget_s=300, log=log)
    assert time.monotonic() - start < 50  # the hanging step was killed at its 2 s timeout
    by = {r["name"]: r for r in results}
    assert [r["name"] for r in results] == ["fails", "hangs", "unreadable", "not_here", "ok"]
    assert (by["fails"]["status"], by["fails"]["returncode"], by["fails"]["error"]) == ("failed", 3, "exit status 3")
    assert "boom" in by["fails"]["log_tail"]
    assert by["hangs"]["status"] == "timeout" and by["hangs"]["timeout_s"] == 2
    assert "started" in by["hangs"]["log_tail"]  # the output before the kill is kept
    assert by["unreadable"]["status"] == "failed" and "ValueError: no such file" in by["unreadable"]["error"]
    assert by["not_here"]["status"] == "skipped" and by["not_here"]["returncode"] is None
    assert by["ok"]["status"] == "ok" and "from-the-step" in log.getvalue()


def test_a_timeout_kills_the_steps_own_subprocesses_too(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('spawned', flush=True); time.sleep(120)"
    )
    start = time.monotonic()
    (result,) = gpu_check.run_steps([gpu_check.Step("spawns", _py(code), 3)], budget_s=300, log=io.StringIO())
    # Killing only the step would leave its subprocess holding the output pipe for 120 s.
    assert time.monotonic() - start < 60
    assert result["status"] == "timeout" and "spawned" in result["log_tail"]
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is asynchronous; the zombie is reaped by init
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{grandchild}/stat").exists() and Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's subprocess {grandchild} outlived the step's timeout")


def test_steps_past_the_budget_are_not_started_and_a_group_shares_what_is_left():
    # budget 40 - reserve 5 = 35 s left: the first of two shared steps gets 35 / 2.
    steps = [
        gpu_check.Step("a", _py("pass"), 600, share_group="g"),
        gpu_check.Step("b", _py("pass"), 600, share_group="g"),
    ]
    first, second = gpu_check.run_steps(steps, budget_s=40, log=io.StringIO())
    assert 16 <= first["timeout_s"] <= 17.5 and first["status"] == "ok"
    assert second["timeout_s"] > first["timeout_s"]  # the unused seconds roll over
    late = gpu_check.run_steps(
        [gpu_check.Step("sleeps", _py("import time; time.sleep(60)"), 3), gpu_check.Step("late", _py("pass"), 60)],
        budget_s=gpu_check.RESERVE_S + gpu_check.MIN_STEP_S + 2,
        log=io.StringIO(),
    )
    assert [r["status"] for r in late] == ["timeout", "out_of_budget"]
    assert late[1]["error"].startswith("budget:")


def test_an_existing_result_is_never_overwritten(tmp_path):
    stem = "2026-12-01-nvidia-h200-gpu-check"
    assert gpu_check.free_stem(tmp_path, stem) == stem
    (tmp_path / f"{stem}.md").write_text("the lead's run")
    assert gpu_check.free_stem(tmp_path, stem) == f"{stem}-2"
    (tmp_path / f"{stem}-2.log").write_text("")
    assert gpu_check.free_stem(tmp_path, stem) == f"{stem}-3"


def test_junit_summary_counts_and_names_the_failures(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.a" name="test_ok"/>'
        '<testcase classname="tests.a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.b" name="test_err"><error message="y"/></testcase>'
        '<testcase classname="tests.b" name="test_skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = gpu_check.junit_summary(xml)
    assert {k: summary[k] for k in ("tests", "passed", "failures", "errors", "skipped")} == {
        "tests": 4,
        "passed": 1,
        "failures": 1,
        "errors": 1,
        "skipped": 1,
    }
    assert summary["failed"] == ["tests.a::test_bad", "tests.b::test_err"]


def test_every_mode_plans_the_same_steps_and_only_the_gpu_modes_ask_for_cuda(tmp_path):
    for mode in gpu_check.MODES:
        steps = gpu_check.plan(mode, tmp_path)
        names = [s.name for s in steps]
        assert names[:4] == ["environment", "tests", "device_resident", "ablation"], mode
        assert [n for n in names[4:]] == [f"throughput:{c}" for c, _ in gpu_check.THROUGHPUT_CASES[mode]]
        platforms = {s.env["JAX_PLATFORMS"] for s in steps}
        assert platforms == ({"cpu"} if mode == "cpu_smoke" else {"cuda"}), mode
        precision = {s.name: s.env.get("JAX_DEFAULT_MATMUL_PRECISION") for s in steps}
        assert precision["tests"] == (None if mode == "cpu_smoke" else "highest")
        assert precision["throughput:lenet5@32"] is None  # timed at JAX's default precision
        ablation = next(s for s in steps if s.name == "ablation").argv
        if mode != "cpu_smoke":  # S4's settings
            assert ablation[ablation.index("--image-size") + 1] == "128"
            assert ablation[ablation.index("--global-batch-size") + 1] == "32"
    full = gpu_check.plan("full", tmp_path)
    # Every model the throughput benchmark knows, in float32 and bfloat16.
    assert [c for c, _ in gpu_check.THROUGHPUT_CASES["full"]] == [c.label for c in DEFAULT_CASES]
    assert {"lenet5@32", "s0_a@150", "s4_exp4@128", "vgg16@224", "vgg16_bn@224"} <= {c.label for c in DEFAULT_CASES}
    for step in full[4:]:
        assert step.argv[step.argv.index("--dtypes") + 1] == "float32,bfloat16"
    assert all("--torch-compile" not in s.argv for s in full)  # the GPU run times torch.compile too


def _sh(*args, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": PY, **env},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--wheels", "/nonexistent-cxrjax-wheels"], "--wheels /nonexistent-cxrjax-wheels is not a folder"),
        (["--cpu-smoke", "--wheels", "/tmp"], "--cpu-smoke uses the current environment; drop --wheels"),
        (["--budget-s", "ten"], "--budget-s must be a whole number of seconds"),
        (["--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_user_errors_are_one_error_line(args, message):
    proc = _sh(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: benchmarks/gpu_check.sh: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_empty_wheels_folder_is_a_user_error(tmp_path):
    proc = _sh("--wheels", str(tmp_path))
    assert proc.returncode == 2 and "holds no .whl files" in proc.stderr


def test_unknown_only_step_is_a_user_error(tmp_path, capsys):
    assert gpu_check.main(["--mode", "cpu_smoke", "--out", str(tmp_path), "--only", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("error: --only nosuch: no such step")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_ok_and_writes_one_report(tmp_path):
    results_dir = ROOT / "benchmarks" / "results"
    before = sorted(p.name for p in results_dir.iterdir())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the benchmarks pick their device counts
    # Generous timeouts: the machine running the tests may be shared (the budget is the point
    # of the GPU run; here it is that every step runs).
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path), "--timeout-scale", "5", "--budget-s", "840"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "PYTHON": PY},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in results_dir.iterdir()) == before  # never into benchmarks/results/
    files = sorted(tmp_path.iterdir())
    assert [p.suffix for p in files] == [".json", ".log", ".md"]
    report = json.loads(files[0].read_text())
    assert files[0].name.endswith("-gpu-check-cpu-smoke.json")
    assert set(report) == {
        "schema",
        "mode",
        "date",
        "device",
        "budget_s",
        "timeout_scale",
        "setup",
        "wall_s",
        "ok",
        "steps",
    }
    assert (report["schema"], report["mode"], report["ok"]) == (gpu_check.SCHEMA, "cpu_smoke", True)
    assert report["device"]["jax_backend"] == "cpu" and report["device"]["jax_version"]
    by = {s["name"]: s for s in report["steps"]}
    assert list(by) == [
        "environment",
        "tests",
        "device_resident",
        "ablation",
        "throughput:lenet5@32",
    ]
    for step in report["steps"]:
        assert step["status"] == "ok", (step["name"], step["error"], step["log_tail"])
        assert set(step) >= {"seconds", "timeout_s", "command", "returncode", "error", "summary", "log_tail"}
    tests = by["tests"]["summary"]
    assert tests["passed"] >= 4 and tests["failures"] == tests["errors"] == 0
    rows = by["throughput:lenet5@32"]["summary"]["rows"]
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    for r in rows:
        assert r["error"] is None and r["images_per_s"] > 0 and r["per_device_batch"] is not None
        if r["torch_images_per_s"] is not None:  # torch is a dev dependency; its ratio follows
            assert r["jax_over_torch"] == pytest.approx(r["images_per_s"] / r["torch_images_per_s"], rel=1e-6)
    resident = by["device_resident"]["summary"]["rows"]  # real training runs, host vs device placement
    assert sorted(r["data_placement"] for r in resident) == ["device", "host"]
    assert all(r["model"] == "lenet5" and r["images_per_second"] > 0 and r["error"] is None for r in resident)
    (cell,) = by["ablation"]["summary"]["rows"]
    assert (cell["cell"], cell["status"], cell["epochs_run"]) == (gpu_check.ABLATION_CELL, "ok", "1")
    md = files[2].read_text()
    assert "| tests | ok |" in md and "## Throughput" in md and "## Ablation cell" in md
    assert "===== ablation" in files[1].read_text()
