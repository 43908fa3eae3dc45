"""Where does a model look? Grad-CAM, overlays, and shortcut probes.

- ``gradcam``: Grad-CAM (and LayerCAM) for every cxrjax model (``make_gradcam_fn``,
  ``gradcam``).
- ``overlay``: heatmap overlays and labelled grids as PNG.
- ``probes``: the scoring of lung-masked evaluation and of the saliency pointing game.
- ``mask_free``: the mask-free shortcut probe (thorax box blanked / only, border strip
  only), for datasets without lung masks.
- ``activations``: grids of a few examples' feature maps per conv stage.
- ``split``: a loaded run over a whole split: saliency maps, the lung-mask probe, the
  mask-free probe and the pointing game (used by ``cxrjax.explain``, ``cxrjax.evaluate``
  and ``cxrjax.predict``).
- ``python -m cxrjax.explain --workdir RUN --out DIR``: Grad-CAM grids of correctly and
  wrongly classified examples per class (and the pointing game on phantoms);
  ``--activations``: feature-map grids instead.
"""
