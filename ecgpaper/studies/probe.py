"""A model-free 1-nearest-neighbour probe (beyond the paper, section 5.2):
each test image takes the label of the most similar training image, compared
as 32 x 32 block averages. It learns nothing about ECG morphology, so what it
scores above chance on a split comes from copies of training images in the
test set (the leakage study) and it is the no-CNN reference of the
robustness study.
"""
from __future__ import annotations

import numpy as np

PROBE_LABEL = "1-NN probe"
PROBE_SIZE = 32  # the probe compares images block-averaged to 32 x 32 (exact copies stay exact)


def probe_features(images: np.ndarray, size: int = PROBE_SIZE, chunk: int = 256) -> np.ndarray:
    """uint8 (n, N, N, 3) -> float32 (n, size*size*3): block averages in [0, 1]
    (in chunks, so 224 px training sets never need a float copy in memory)."""
    from PIL import Image

    x = np.asarray(images)
    n = x.shape[1]
    out = np.empty((len(x), size * size * 3), np.float32)
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start:start + chunk])
        if n == size:
            small = part.astype(np.float32)
        elif n % size == 0:
            k = n // size
            small = part.reshape(len(part), size, k, size, k, 3).mean(axis=(2, 4), dtype=np.float32)
        else:
            small = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX),
                                         np.float32) for im in part])
        out[start:start + len(part)] = (small / 255.0).reshape(len(part), -1)
    return out


def fit_probe(x_train: np.ndarray, y_train: np.ndarray):
    """A 1-nearest-neighbour classifier (Euclidean, on :func:`probe_features`)
    fitted on the training images; predict with ``probe.predict(probe_features(x))``."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=1, algorithm="brute")
    return knn.fit(probe_features(x_train), np.asarray(y_train))


def nn_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Predicted labels of the 1-nearest-neighbour probe: the label of the most
    similar training image."""
    return fit_probe(x_train, y_train).predict(probe_features(x_test))
