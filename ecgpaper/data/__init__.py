"""Stage 1, the data (paper section 3.1, "data collection" and "preprocessing").

From an archive on disk to cached, split arrays: ``download`` (the Kaggle
archive), ``synthetic`` (the offline twin's archive; ``twin_physiology`` draws
its leads, ``twin_render`` its pages), ``discovery`` (class folders),
``inventory`` (one row per image, hashes, corrupt files skipped), ``audit``
(duplicate groups), ``splits`` (the paper's 70/15/15 and the leakage-free
protocols), ``preprocess`` (decode, crop, resize into a uint8 cache) and
``prepare`` (all of it in one call). Imports nothing from ``model``, ``runs``,
``studies`` or ``serve``.
"""
