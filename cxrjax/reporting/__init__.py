"""What every tool of cxrjax reports with: metrics, plots, JSON files.

Below every tool that uses it (the trainer, evaluate, predict, explain, experiments,
benchmarks) and above nothing but numpy, scikit-learn and matplotlib:

- ``metrics``: :func:`~cxrjax.reporting.metrics.classification_report` on every example
  of a split, and its text form;
- ``calibration``: ECE / MCE / Brier / NLL, temperature scaling fitted on validation,
  operating thresholds for a target sensitivity, and what every evaluated split reports;
- ``plots``: learning curves, confusion matrix, ROC and precision-recall PNGs (operating
  points marked), reliability diagrams;
- ``jsonio``: strict JSON / JSON-lines files, written atomically;
- ``stats``: the one statistics module: seed statistics of experiment grids (t intervals,
  Welch / paired tests, Holm) and, below them, the per-example statistics of one split's
  predictions (stratified bootstrap intervals, paired bootstrap, exact McNemar).
"""
