"""The multi-process flags (issue 18): parsed from the command line, result-irrelevant,
checked together before jax.distributed starts, and a no-op for a single process."""

import pytest

from cxrjax.train import distributed
from cxrjax.train.cli import build_parser, config_from_args, main
from cxrjax.train.config import RESULT_IRRELEVANT_FIELDS, TrainConfig, result_relevant_differences

FIELDS = ("distributed", "coordinator_address", "num_processes", "process_id", "distributed_timeout_seconds")


def test_flags_reach_the_config_and_do_not_change_what_is_trained():
    args = build_parser().parse_args(
        "--coordinator-address 10.0.0.1:1234 --num-processes 4 --process-id 3 --distributed-timeout-seconds 9".split()
    )
    config = config_from_args(args)
    assert (config.coordinator_address, config.num_processes, config.process_id) == ("10.0.0.1:1234", 4, 3)
    assert config.distributed_timeout_seconds == 9 and distributed.requested(config)
    assert result_relevant_differences(TrainConfig().to_dict(), config.to_dict()) == {}
    assert set(FIELDS) <= RESULT_IRRELEVANT_FIELDS
    assert not distributed.requested(TrainConfig())
    assert distributed.requested(config_from_args(build_parser().parse_args(["--distributed"])))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"coordinator_address": "h:1", "num_processes": 2}, "--process-id missing"),
        ({"num_processes": 2, "process_id": 0}, "--coordinator-address missing"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, r"--process-id 2 is not in 0\.\.1"),
    ],
)
def test_incomplete_or_inconsistent_cluster_flags_are_refused(changes, message, monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedSetupError, match=message):
        distributed.initialize(TrainConfig(**changes))


def test_environment_fills_unset_flags(monkeypatch):
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "h:7")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "3")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
    assert distributed._arguments(TrainConfig(distributed=True)) == {
        "coordinator_address": "h:7",
        "num_processes": 3,
        "process_id": 1,
    }
    assert distributed._arguments(TrainConfig(distributed=True, process_id=2))["process_id"] == 2


def test_cli_prints_one_error_line(tmp_path, capsys):
    flags = ["--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "5"]
    rc = main(["--workdir", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --process-id 5 is not in 0..1") and err.count("\n") == 1, err


def test_one_process_helpers_are_the_single_process_answers():
    assert not distributed.initialize(TrainConfig())
    assert distributed.is_primary() and distributed.process_count() == 1
    distributed.barrier("unused")  # returns at once
    assert distributed.allgather_json({"a": [1, None]}) == [{"a": [1, None]}]
    assert distributed.allgather_rows([1, 2]).tolist() == [[1, 2]]
