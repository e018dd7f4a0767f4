"""Means of `stride` consecutive rows, across calls: what both drift monitors feed a detector.

Telemetry and forecast errors are autocorrelated, and every detector in the registry
assumes independent inputs; averaging groups of `stride` rows gives it inputs that are
nearly so, and divides the cost per event by `stride` (see `consumer.detectors`). A
group may straddle two blocks: the rows left over wait, copied, for the next call.
"""

from __future__ import annotations

import numpy as np


def stride_means(
    pending: np.ndarray, rows: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """The means of each full group of `stride` rows of `pending` then `rows`, and the rest.

    Both arrays are (n, width) floats; the means are (groups, width), in order, and the
    rest (fewer than `stride` rows) is a copy, so it never keeps a large block alive.

    >>> means, rest = stride_means(np.array([[1.0]]), np.array([[3.0], [5.0], [7.0]]), 2)
    >>> means.ravel().tolist(), rest.ravel().tolist()
    ([2.0, 6.0], [])
    """
    merged = np.concatenate((pending, rows)) if len(pending) else rows
    groups = len(merged) // stride
    cut = groups * stride
    means = np.add.reduce(merged[:cut].reshape(groups, stride, merged.shape[1]), axis=1)
    means /= stride
    return means, merged[cut:].copy()
