"""The ablation pairs cells by ``Cell.network``: cells that share it must start from the
same initial weights for a seed (the paired tests assume it), and dropout cells do."""

import itertools
import json

import jax
import numpy as np
import optax

from cxrjax.train import PRESETS
from cxrjax.train.run_setup import build_model
from cxrjax.train.state import make_init_fn
from experiments import ablation_bn_dropout as ablation

SMALL = {"features": [3, 4, 5, 6], "head_width": 7}
SHAPE = (20, 20, 3)


_CACHE = {}


def _initial_params(config, seed):
    """Seed ``seed``'s initial params (one init compiled per distinct model)."""
    key = (config.model, json.dumps(config.model_options, sort_keys=True), seed)
    if key not in _CACHE:
        model = build_model(config, 4, SHAPE[2], axis_name=None)
        _CACHE[key] = make_init_fn(model, optax.sgd(0.1), SHAPE)(seed).params
    return _CACHE[key]


def test_cells_of_one_network_start_from_the_same_weights():
    base = PRESETS["s4_exp2"].replace(model_options=SMALL)
    cells = ablation.s4_cells()
    by_network = {}
    for cell in cells:
        by_network.setdefault(cell.network, []).append(cell)
    # BatchNorm none / first / all: four cells each (dropout 0 / 0.25 x early stopping off / on)
    assert sorted(len(v) for v in by_network.values()) == [1, 4, 4, 4]
    for members in by_network.values():
        params = [_initial_params(ablation.cell_config(base, c, 5, 3), 5) for c in members]
        for p, q in itertools.pairwise(params):
            assert jax.tree.structure(p) == jax.tree.structure(q)
            assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q)))
    # ... and different networks do not (so they are compared as independent samples)
    none, every = (by_network[f"s4_exp2/bn={bn}"][0] for bn in ("none", "all"))
    p, q = (_initial_params(ablation.cell_config(base, c, 5, 3), 5) for c in (none, every))
    assert jax.tree.structure(p) != jax.tree.structure(q)
