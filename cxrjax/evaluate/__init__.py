"""Evaluate trained runs: metrics, plots, shortcut probes and ensembles.

```
python -m cxrjax.evaluate --workdir RUN [--workdir RUN2 ...] [--dataset NAME
    --manual-dir DIR --data-dir DIR] [--split test]
```

```python
from cxrjax.evaluate import EvalOptions, evaluate
result = evaluate(EvalOptions(workdirs=("runs/exp4",)))   # writes eval_<dataset>_<split>.json
```

Modules: ``runs`` (dataset of a run, class-list check, predictions over a split, shared
with ``cxrjax.predict`` and ``cxrjax.explain``), ``report`` (per-run and ensemble reports),
``ensemble`` (probability averaging), ``plots`` (precision-recall curves).
"""
from cxrjax.evaluate.report import EvalOptions, evaluate, evaluate_member
from cxrjax.evaluate.runs import ClassListMismatchError, EvaluationInputError, label_mapping

__all__ = ["ClassListMismatchError", "EvaluationInputError", "EvalOptions", "evaluate", "evaluate_member", "label_mapping"]
