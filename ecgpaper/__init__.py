"""ecgpaper: reproducible package for the paper "Comparative analysis of CNN
models for detecting cardiovascular diseases" (VGG16 vs ResNet50 on 12-lead ECG
report images, Kaggle ``evilspirit05/ecg-analysis``).

One module per stage: ``config`` (the paper's constants and the profiles),
``paths``, ``download``, ``synthetic`` (the offline twin), ``discovery``,
``inventory``, ``audit``, ``splits``, ``preprocess`` (decode/crop/resize cache),
``pipeline`` (tf.data), ``cli``.
"""

__version__ = "0.1.0"
