"""Stage 3, training runs (paper sections 3.5, 4 and 5.4): ``training`` (one
run: the recipe, its checkpoints and metrics), ``store`` (the run folders and
registry on disk: the one place that reads and writes them), ``experiments``
(baseline, grid search, the five-run repeat), ``engine`` (each run in its own
process, several at once on the GPUs or on a Ray cluster; ``worker`` is that
process, ``spill`` its data on disk), ``export`` (the exported model and
its metadata contract, read back by the web service) and ``sanity`` (overfit
one batch, shuffled-label control).
"""
