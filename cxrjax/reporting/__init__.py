"""What every tool of cxrjax reports with: metrics, plots, JSON files.

Below every tool that uses it (the trainer, evaluate, predict, explain, experiments,
benchmarks) and above nothing but numpy, scikit-learn and matplotlib:

- ``metrics``: :func:`~cxrjax.reporting.metrics.classification_report` on every example
  of a split, and its text form;
- ``plots``: learning curves, confusion matrix, ROC and precision-recall PNGs;
- ``jsonio``: strict JSON / JSON-lines files, written atomically;
- ``stats``: the one statistics module: seed statistics of experiment grids (t intervals,
  Welch / paired tests, Holm) and, below them, what compares predictions.
"""
