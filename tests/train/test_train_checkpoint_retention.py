"""Checkpoint retention keeps the latest AND the best; half-written checkpoints are ignored."""

import numpy as np

from cxrjax.train.checkpointing import CheckpointStore


def _tree(value):
    return {"params": {"w": np.full((3,), value, np.float32)}, "step": np.asarray(value, np.int32)}


def test_latest_and_best_survive(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    # (step, best_rank): epochs 1 and 2 improve, 3 and 4 do not; step 5 is mid-epoch.
    plan = [(10, 1), (20, 2), (30, -1), (35, None), (40, -1)]
    kept = []
    for step, rank in plan:
        store.save(step, _tree(step), {"epoch": step // 10}, best_rank=rank)
        store.wait()
        kept.append(store.steps())
    store.close()
    assert kept == [[10], [20], [20, 30], [20, 35], [20, 40]]
    reopened = CheckpointStore(tmp_path / "ckpt")
    assert (reopened.best_step(), reopened.latest_step()) == (20, 40)
    tree, meta = reopened.restore(20, _tree(0))
    assert meta == {"epoch": 2}
    np.testing.assert_array_equal(tree["params"]["w"], np.full((3,), 20, np.float32))
    reopened.close()


def test_half_written_checkpoint_is_ignored(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(10, _tree(10), {"epoch": 1}, best_rank=1)
    store.close()
    # What a kill during an orbax save leaves behind: a temporary directory of a later step.
    partial = tmp_path / "ckpt" / "20.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    store = CheckpointStore(tmp_path / "ckpt")
    assert store.steps() == [10] and store.latest_step() == 10
    tree, _ = store.restore(store.latest_step(), _tree(0))
    assert int(tree["step"]) == 10
    store.save(20, _tree(20), {"epoch": 2}, best_rank=2)  # the same step saves cleanly afterwards
    store.close()
    assert CheckpointStore(tmp_path / "ckpt", read_only=True).steps() == [20]
