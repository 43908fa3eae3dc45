"""Evaluate trained runs: metrics, plots, shortcut probes and ensembles.

```
python -m cxrjax.evaluate --workdir RUN [--workdir RUN2 ...] [--dataset NAME
    --manual-dir DIR --data-dir DIR] [--split test]
python -m cxrjax.evaluate --compare RUN_A RUN_B [--split test]
```

```python
from cxrjax.evaluate import EvalOptions, evaluate
result = evaluate(EvalOptions(workdirs=("runs/exp4",)))   # writes eval_<dataset>_<split>.json
```

Modules: ``report`` (per-run and ensemble reports), ``ensemble`` (probability
averaging), ``compare`` (two runs on the same split, paired: ``--compare RUN_A RUN_B``).
The run and its dataset come from ``cxrjax.inference``, the probes from
``cxrjax.explain``, metrics and plots from ``cxrjax.reporting``.
"""

from cxrjax.evaluate.report import EvalOptions, evaluate, evaluate_member
from cxrjax.inference import ClassListMismatchError, EvaluationInputError, label_mapping

__all__ = [
    "ClassListMismatchError",
    "EvaluationInputError",
    "EvalOptions",
    "evaluate",
    "evaluate_member",
    "label_mapping",
]
