"""Stage 4, beyond the paper (sections 5.2 and 5.5): one module per study, each
with the same verbs (run it, its table, its figure, its sentences for
REPORT.md): ``leakage``, ``probe`` (model-free 1-nearest-neighbour probe of a
split), ``interpretability`` (Grad-CAM), ``robustness``, ``lightweight``,
``input_ablation``, ``significance`` (intervals and paired tests) with
``verdicts`` (the one rule that compares ours with the paper), and ``common``
(what they share: the data source, output names). No study imports ``report``
or ``serve``.
"""
