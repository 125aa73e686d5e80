"""ecgpaper: reproducible package for the paper "Comparative analysis of CNN
models for detecting cardiovascular diseases" (VGG16 vs ResNet50 on 12-lead ECG
report images, Kaggle ``evilspirit05/ecg-analysis``).

One package per stage, each importing only the ones below it (README "Layout";
the contracts in pyproject.toml): ``data`` -> ``model`` -> ``runs`` ->
``figures`` -> ``studies`` | ``serve``, on top of ``config``, ``paths``,
``errors``, ``metrics`` and ``outputs``; ``report``, ``narrative``,
``runner`` and ``cli`` put them together.
"""

__version__ = "0.1.0"
