"""Generated data sets of the example trainers: no downloads, one seed, two modes.

Every generator draws all its random arrays from the seed's "data" stream in
the same order whatever the mode, so "realistic" and "oracle" see the same
examples and labels and differ only in the features they are shown:

- realistic: what a sensor would give, the true signal plus observation noise
  (`--noise`), plus distractor features that carry no signal;
- oracle: the same, plus the noise-free generating signal itself as extra
  features. A model cannot do better than this on the task, so an oracle job is
  the upper bound its realistic twin is measured against.

Labels are drawn from the signal, so even the oracle is not always right on the
tabular task (its labels are Bernoulli draws); the image and sequence tasks are
noise-free in their labels and the oracle should get close to 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.examples.common import rng


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, (n, ...) as the model consumes it
    y: np.ndarray  # int64 class labels, (n,)
    n_classes: int


def tabular(seed: int, mode: str, n_samples: int, n_features: int, noise: float) -> Dataset:
    """Binary classification with interactions a linear model misses.

    Features: x_true (n_features) observed with noise, then n_features // 2
    distractors. Oracle appends x_true and the true logit.
    """
    gen = rng(seed, "data")
    n, d = n_samples, n_features
    x_true = gen.standard_normal((n, d))
    weights = gen.standard_normal(d) / np.sqrt(d)
    measurement = gen.standard_normal((n, d))
    distractors = gen.standard_normal((n, max(1, d // 2)))
    draws = gen.random(n)
    logit = 3.0 * (x_true @ weights)
    logit += 2.0 * x_true[:, 0] * x_true[:, 1 % d] + 1.5 * np.sin(2.0 * x_true[:, 2 % d])
    y = (draws < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    observed = x_true + noise * measurement
    parts = [observed, distractors]
    if mode == "oracle":
        parts += [x_true, logit[:, None]]
    return Dataset(np.concatenate(parts, axis=1).astype(np.float32), y, 2)


IMAGE_CLASSES = ("horizontal", "vertical", "cross", "box")


def images(seed: int, mode: str, n_samples: int, size: int, noise: float) -> Dataset:
    """Which stroke is in the picture: a horizontal or vertical bar, a cross or a
    small box, at a random place with a random brightness, in pixel noise.

    Shape (n, channels, size, size): realistic has the noisy picture only;
    oracle adds the clean picture as a second channel.
    """
    gen = rng(seed, "data")
    n = n_samples
    labels = gen.integers(0, len(IMAGE_CLASSES), n)
    rows = gen.integers(1, size - 1, n)
    cols = gen.integers(1, size - 1, n)
    brightness = gen.uniform(0.6, 1.4, n)
    pixel_noise = gen.standard_normal((n, size, size))
    clean = np.zeros((n, size, size))
    half = max(1, size // 4)
    for i in range(n):
        r, c, label = rows[i], cols[i], labels[i]
        lo_r, hi_r = max(0, r - half), min(size, r + half + 1)
        lo_c, hi_c = max(0, c - half), min(size, c + half + 1)
        if label == 0:
            clean[i, r, lo_c:hi_c] = 1
        elif label == 1:
            clean[i, lo_r:hi_r, c] = 1
        elif label == 2:
            clean[i, r, lo_c:hi_c] = 1
            clean[i, lo_r:hi_r, c] = 1
        else:
            clean[i, r - 1 : r + 2, c - 1 : c + 2] = 1
            clean[i, r, c] = 0
    clean *= brightness[:, None, None]
    channels = [clean + noise * pixel_noise]
    if mode == "oracle":
        channels.append(clean)
    x = np.stack(channels, axis=1).astype(np.float32)
    return Dataset(x, labels.astype(np.int64), len(IMAGE_CLASSES))


SEQUENCE_PERIODS = (16.0, 8.0, 4.0)


def sequences(seed: int, mode: str, n_samples: int, seq_len: int, noise: float) -> Dataset:
    """Which rhythm is hidden in a noisy signal: a sine of period 16, 8 or 4
    steps with random phase and amplitude.

    Shape (n, seq_len, channels): realistic has the noisy signal only; oracle
    adds the clean sine as a second channel.
    """
    gen = rng(seed, "data")
    n = n_samples
    labels = gen.integers(0, len(SEQUENCE_PERIODS), n)
    phase = gen.uniform(0, 2 * np.pi, n)
    amplitude = gen.uniform(0.6, 1.4, n)
    step_noise = gen.standard_normal((n, seq_len))
    periods = np.asarray(SEQUENCE_PERIODS)[labels]
    t = np.arange(seq_len)[None, :]
    clean = amplitude[:, None] * np.sin(2 * np.pi * t / periods[:, None] + phase[:, None])
    channels = [clean + noise * step_noise]
    if mode == "oracle":
        channels.append(clean)
    x = np.stack(channels, axis=2).astype(np.float32)
    return Dataset(x, labels.astype(np.int64), len(SEQUENCE_PERIODS))
