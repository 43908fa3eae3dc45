"""The experiments' run function opens each dataset once per process: every EngineRun,
also one unpickled in a worker for each task of a parallel grid, shares the open one;
and experiments turn the per-run plots off (their report draws its own)."""

import argparse
import pickle
import types

from experiments import experiment


def test_dataset_opened_once_per_process_across_engine_runs(monkeypatch):
    calls = []

    def load(name, *, data_dir, manual_dir, options):
        calls.append((name, data_dir, manual_dir, dict(options)))
        return object()

    from cxrjax import data

    monkeypatch.setattr(data, "load", load)
    monkeypatch.setattr(experiment, "_OPENED", {})
    config = types.SimpleNamespace(dataset="cxr_phantoms", data_dir="/d", manual_dir=None, dataset_options={"n": 1})
    first = experiment.EngineRun()
    first.prepare([config, config])
    copy = pickle.loads(pickle.dumps(first))  # what a worker gets with each task
    assert copy.dataset_for(config) is experiment.EngineRun().dataset_for(config) is first.dataset_for(config)
    other = types.SimpleNamespace(**{**vars(config), "dataset_options": {"n": 2}})
    assert copy.dataset_for(other) is not copy.dataset_for(config)
    assert [c[3] for c in calls] == [{"n": 1}, {"n": 2}]


def test_experiment_runs_draw_no_per_run_plots():
    args = argparse.Namespace(data_dir="data", manual_dir=None, compilation_cache="", global_batch_size=32)
    config = experiment.preset_config(args, "s4_exp2", num_devices=1)
    assert config.plots is False and config.progress is False
