"""Where does a model look? Grad-CAM, overlays, and shortcut probes.

- ``gradcam``: Grad-CAM (and LayerCAM) for every cxrjax model (``make_gradcam_fn``,
  ``gradcam``).
- ``overlay``: heatmap overlays and labelled grids as PNG.
- ``probes``: lung-masked evaluation and the saliency pointing game.
- ``python -m cxrjax.explain --workdir RUN --out DIR``: Grad-CAM grids of correctly and
  wrongly classified examples per class (and the pointing game on phantoms).
"""
