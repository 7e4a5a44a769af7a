"""What a person looks at during training: TensorBoard scalars, WAV samples, spectrogram PNGs.

Only process 0 writes; every other process gets writers that do nothing, so call sites need no
``if jax.process_index() == 0`` of their own.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np


class MetricWriter:
    """TensorBoard scalars/audio/images under ``logdir`` (process 0 only)."""

    def __init__(self, logdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            from etils import epath

            epath.Path(logdir).mkdir(parents=True, exist_ok=True)  # also a gs:// logdir
            self._writer = SummaryWriter(os.fspath(logdir))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self._writer:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), step)

    def audio(self, step: int, name: str, audio: np.ndarray, sample_rate: int) -> None:
        if self._writer:
            self._writer.add_audio(name, np.clip(audio, -1, 1), step, sample_rate=sample_rate)

    def image(self, step: int, name: str, png_path: str) -> None:
        if not self._writer:
            return
        import matplotlib.image

        img = matplotlib.image.imread(png_path)[..., :3]
        self._writer.add_image(name, img, step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()
            self._writer = None


def save_spectrogram_png(path: str, signals: Mapping[str, np.ndarray], sample_rate: int) -> str:
    """Log-magnitude spectrograms of several signals stacked vertically, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import librosa
    import librosa.display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(signals), 1, figsize=(10, 2.6 * len(signals)), squeeze=False)
    for ax, (title, sig) in zip(axes[:, 0], signals.items()):
        spec = np.abs(librosa.stft(np.asarray(sig, np.float32), n_fft=1024, hop_length=256))
        db = librosa.amplitude_to_db(spec + 1e-9, ref=np.max)
        librosa.display.specshow(db, sr=sample_rate, hop_length=256, x_axis="time",
                                 y_axis="hz", ax=ax, vmin=-80, vmax=0)
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
