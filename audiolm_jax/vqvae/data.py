"""Images for the VQ-VAE experiment: Fashion-MNIST from TFDS (or a synthetic stand-in).

Both give float32 images [N, 28, 28] scaled to [0, 1] and int32 labels [N], restricted to
``data.classes`` (default (0, 1, 2): t-shirt/top, trouser, pullover). Batches come from
:class:`ImageBatchIterator`, which is deterministic given the seed and resumable from a small
JSON state, as the shared train loop's checkpoints require.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle boot")


def class_name(label: int, dataset: str = "fashion_mnist") -> str:
    if dataset == "fashion_mnist" and 0 <= int(label) < len(FASHION_MNIST_CLASSES):
        return FASHION_MNIST_CLASSES[int(label)]
    return f"class {int(label)}"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Fashion-MNIST VQ-VAE experiment reads TFDS 'fashion_mnist'; install it with "
            "`pip install audiolm_jax[tfds]` (or set data.dataset='synthetic')") from e
    return tfds


def _read_all(source) -> list[dict]:
    n = len(source)
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            out = []
            for start in range(0, n, 4096):
                out.extend(getitems(list(range(start, min(start + 4096, n)))))
            return out
        except TypeError:  # some sources (e.g. tfds mocks) only support single indexing
            pass
    return [source[i] for i in range(n)]


def filter_classes(images: np.ndarray, labels: np.ndarray,
                   classes: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the rows whose label is in ``classes`` (None or empty keeps everything)."""
    if classes is None or len(classes) == 0:
        return images, labels
    keep = np.isin(labels, np.asarray(list(classes), np.int64))
    return images[keep], labels[keep]


def load_fashion_mnist(split: str = "train", classes: Sequence[int] | None = (0, 1, 2),
                       data_dir: str | None = None,
                       max_examples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, 28, 28] in [0, 1], labels int32 [N]) of one TFDS split."""
    tfds = _import_tfds()
    source = tfds.data_source("fashion_mnist", split=split, data_dir=data_dir or None)
    records = _read_all(source)
    if not records:
        raise ValueError(f"TFDS fashion_mnist split {split!r} is empty")
    images = np.stack([np.asarray(r["image"]) for r in records]).reshape(len(records), 28, 28)
    labels = np.asarray([int(np.asarray(r["label"])) for r in records], np.int64)
    images, labels = filter_classes(images, labels, classes)
    if max_examples:
        images, labels = images[:max_examples], labels[:max_examples]
    return images.astype(np.float32) / 255.0, labels.astype(np.int32)


def synthetic_images(num: int, classes: Sequence[int] = (0, 1, 2), seed: int = 0,
                     size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic toy image set: one blurred template per class, jittered in position,
    size and brightness, plus a little noise. Shapes: [num, size, size] in [0, 1], labels
    cycling through ``classes``."""
    rng = np.random.default_rng(seed)
    classes = list(classes) or [0, 1, 2]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    labels = np.asarray([classes[i % len(classes)] for i in range(num)], np.int32)
    images = np.empty((num, size, size), np.float32)
    for i, label in enumerate(labels):
        dx, dy = rng.uniform(-0.08, 0.08, 2)
        scale = rng.uniform(0.8, 1.2)
        x, y = (xx - dx) / scale, (yy - dy) / scale
        kind = int(label) % 4
        if kind == 0:      # a filled box ("top")
            img = (np.abs(x) < 0.28) & (np.abs(y) < 0.3)
        elif kind == 1:    # two vertical bars ("trouser")
            img = (np.abs(np.abs(x) - 0.12) < 0.07) & (np.abs(y) < 0.4)
        elif kind == 2:    # a disc ("pullover")
            img = x ** 2 + y ** 2 < 0.3 ** 2
        else:              # a ring
            r = np.sqrt(x ** 2 + y ** 2)
            img = np.abs(r - 0.28) < 0.06
        img = img.astype(np.float32) * rng.uniform(0.6, 1.0)
        img += 0.05 * rng.standard_normal(img.shape).astype(np.float32)
        images[i] = np.clip(img, 0.0, 1.0)
    return images, labels


def load_images(config: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images of a config's ``data.dataset`` for ``split`` ('train' or 'eval')."""
    d = config.data
    classes = tuple(int(c) for c in d.get("classes", (0, 1, 2)))
    dataset = d.get("dataset", "fashion_mnist")
    if dataset == "fashion_mnist":
        tfds_split = d.get("train_split", "train") if split == "train" else d.get("eval_split", "test")
        max_examples = int(d.get("max_train_examples", 0) or 0) if split == "train" else \
            int(d.get("num_eval", 0) or 0)
        return load_fashion_mnist(tfds_split, classes, d.get("data_dir", "") or None, max_examples)
    if dataset == "synthetic":
        seed = int(config.train.seed) + (0 if split == "train" else 1_000_003)
        num = int(d.get("synthetic_examples", 1024)) if split == "train" else \
            int(d.get("num_eval", 512) or 512)
        return synthetic_images(num, classes, seed)
    raise ValueError(f"data.dataset must be 'fashion_mnist' or 'synthetic', got {dataset!r}")


class ImageBatchIterator:
    """Endless, shuffled, resumable batches {'image': [b, H, W] float32, 'label': [b] int32}.

    The global sample stream is the concatenation of epochs, each a permutation of the data
    drawn from ``(seed, epoch)``; global batch ``n`` holds stream positions
    ``[n * batch_size, (n + 1) * batch_size)``. With several processes each one yields its
    contiguous slice of rows of the global batch. The state is just ``{'batch': n}``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0,
                 shard_index: int = 0, shard_count: int = 1):
        if len(images) == 0:
            raise ValueError("no images to iterate over (check data.classes)")
        if batch_size % shard_count:
            raise ValueError(f"batch size {batch_size} is not divisible by {shard_count} processes")
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels, np.int32)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.batch = 0
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perm_cache[epoch] = rng.permutation(len(self.images))
        return self._perm_cache[epoch]

    def indices(self, batch: int) -> np.ndarray:
        """Row indices of this process's share of global batch ``batch``."""
        local = self.batch_size // self.shard_count
        start = batch * self.batch_size + self.shard_index * local
        pos = np.arange(start, start + local)
        n = len(self.images)
        return np.asarray([self._perm(int(p // n))[p % n] for p in pos], np.int64)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = self.indices(self.batch)
        self.batch += 1
        return {"image": self.images[idx], "label": self.labels[idx]}

    def get_state(self) -> dict:
        return {"batch": int(self.batch), "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"checkpointed data seed {state['seed']} != train.seed {self.seed}")
        self.batch = int(state["batch"])


def make_train_iterator(config: Any, data: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> ImageBatchIterator:
    """This process's batch iterator for ``config``; ``data`` = (images, labels) overrides the
    configured dataset (already in [0, 1])."""
    import jax

    images, labels = data if data is not None else load_images(config, "train")
    return ImageBatchIterator(images, labels, int(config.train.batch_size),
                              seed=int(config.train.seed), shard_index=jax.process_index(),
                              shard_count=jax.process_count())
