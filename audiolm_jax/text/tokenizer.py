"""SentencePiece text tokenizer for the ("inner monologue") text stream, and a small trainer.

Moshi (Kyutai) writes its text stream with a SentencePiece model (``tokenizer_spm_32k_3.model``,
32000 pieces). Two ids of that vocabulary carry stream meaning rather than text:

- id 0: EPAD, "end of padding", the frame just before a word's first token;
- id 3: PAD, the frame carries no text (``existing_text_padding_id`` in ``moshi/models/lm.py``).

:class:`TextTokenizer` wraps any SentencePiece ``.model`` file, Kyutai's included, behind the small
interface the stream builder uses (``encode(str) -> list[int]``).

:func:`train_tokenizer` trains a small model in-process, for tests and for corpora without Kyutai's
tokenizer. Its models keep Moshi's meanings for ids 0..3, and none of the reserved ids can come out
of ``encode``:

====  ==========  ==========================================================================
id    piece       role
====  ==========  ==========================================================================
0     ``<epad>``  control symbol, EPAD in the text stream (``encode`` never produces it)
1     ``<s>``     BOS (``bos_id``), used at turn changes when the stream asks for BOS/EOS
2     ``</s>``    EOS (``eos_id``)
3     ``<pad>``   PAD (``pad_id``; ``encode`` never produces it)
4     ``<unk>``   unknown (``unk_id``): characters the training text lacks encode to 4, not 0
5...  pieces      learned pieces
====  ==========  ==========================================================================

SentencePiece's defaults put ``<unk>`` at 0, where an unseen character would then read as EPAD;
with ``<unk>`` at 4, every id ``encode`` returns is 4 or above.

``sentencepiece`` is imported inside the functions that need it, so the package imports without it.
"""

from __future__ import annotations

import io
import os
import pathlib
import tempfile
from typing import Iterable, Sequence

__all__ = [
    "TextTokenizer",
    "train_tokenizer",
    "EPAD_PIECE",
    "PAD_PIECE",
    "BOS_PIECE",
    "EOS_PIECE",
    "UNK_PIECE",
]

EPAD_PIECE = "<epad>"
BOS_PIECE = "<s>"
EOS_PIECE = "</s>"
PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise ImportError(
            "the text tokenizer needs the sentencepiece package: pip install sentencepiece"
        ) from None
    return sentencepiece


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class TextTokenizer:
    """A loaded SentencePiece model: ``encode``/``decode`` between text and ids.

    Build it with :meth:`load` (a ``.model`` file) or :meth:`from_bytes` (a serialized model).
    It pickles as its model bytes, so data-loader worker processes can receive it.
    """

    def __init__(self, model_bytes: bytes, name: str = "<bytes>"):
        spm = _sentencepiece()
        if not model_bytes:
            raise ValueError(f"{name}: not a SentencePiece model (the file is empty)")
        try:
            processor = spm.SentencePieceProcessor(model_proto=bytes(model_bytes))
        except (RuntimeError, OSError, TypeError) as e:
            raise ValueError(
                f"{name}: not a SentencePiece model ({_one_line(e)[:120]})"
            ) from None
        if processor.vocab_size() <= 0:
            raise ValueError(f"{name}: not a SentencePiece model (it holds no pieces)")
        self._model_bytes = bytes(model_bytes)
        self._sp = processor
        self.name = name

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Load a ``.model`` file; a missing, unreadable or corrupt file raises a one-line
        ``ValueError`` that names it."""
        _sentencepiece()  # a missing package is reported before a missing file
        path = pathlib.Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{path}: no such SentencePiece model file") from None
        except OSError as e:
            raise ValueError(
                f"{path}: cannot read the SentencePiece model ({_one_line(e)})"
            ) from None
        return cls(data, name=str(path))

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> "TextTokenizer":
        return cls(model_bytes)

    def __getstate__(self):
        return {"model_bytes": self._model_bytes, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["model_bytes"], state["name"])

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size})"

    @property
    def model_bytes(self) -> bytes:
        """The serialized model, as loaded."""
        return self._model_bytes

    @property
    def vocab_size(self) -> int:
        return int(self._sp.vocab_size())

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (SentencePiece adds its word-start marker before the first piece)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return [int(i) for i in self._sp.encode(text, out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; control ids (EPAD, PAD, BOS, EOS) decode to nothing."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"{self.name}: id {bad[0]} is outside the vocabulary [0, {self.vocab_size})"
            )
        return self._sp.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"{self.name}: id {token_id} is outside the vocabulary [0, {self.vocab_size})"
            )
        return self._sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int | None:
        """Id of ``piece``, or None when the vocabulary lacks it."""
        token_id = int(self._sp.piece_to_id(piece))
        if token_id == self._sp.unk_id() and piece != self._sp.id_to_piece(token_id):
            return None
        return token_id

    def _special(self, token_id: int) -> int | None:
        token_id = int(token_id)
        return token_id if 0 <= token_id < self.vocab_size else None

    @property
    def unk_id(self) -> int | None:
        return self._special(self._sp.unk_id())

    @property
    def bos_id(self) -> int | None:
        return self._special(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return self._special(self._sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        return self._special(self._sp.pad_id())

    @property
    def control_ids(self) -> tuple[int, ...]:
        """Ids of the control pieces (never produced by ``encode``), in id order."""
        return tuple(i for i in range(self.vocab_size) if self._sp.is_control(i))


def train_tokenizer(
    words_or_sentences: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    hard_vocab_limit: bool = False,
) -> TextTokenizer:
    """Train a SentencePiece model on ``words_or_sentences`` and write it to ``out_path``.

    The id layout is the one in the module docstring (ids 0..4 reserved). The same input and
    arguments give the same model bytes: training runs on one thread over the input in its given
    order. The file is written to a temporary name beside ``out_path`` and renamed over it, so a
    reader never sees a partial model.

    ``vocab_size`` counts the five reserved pieces. With ``hard_vocab_limit=False`` (the default)
    it is an upper bound, which small corpora need: they may not support that many pieces.
    Returns the trained tokenizer, loaded from the written file.
    """
    spm = _sentencepiece()
    out_path = pathlib.Path(out_path)
    sentences = []
    for s in words_or_sentences:
        if not isinstance(s, str):
            raise TypeError(f"train_tokenizer takes strings, got {type(s).__name__}")
        if s.strip():
            sentences.append(s)
    if not sentences:
        raise ValueError(f"{out_path}: no text to train the tokenizer on")
    if int(vocab_size) < 6:
        raise ValueError(
            f"{out_path}: vocab_size {vocab_size} leaves no room beyond the 5 reserved ids"
        )

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=int(vocab_size),
            model_type=model_type,
            character_coverage=float(character_coverage),
            hard_vocab_limit=bool(hard_vocab_limit),
            control_symbols=[EPAD_PIECE],
            bos_id=1,
            eos_id=2,
            pad_id=3,
            unk_id=4,
            bos_piece=BOS_PIECE,
            eos_piece=EOS_PIECE,
            pad_piece=PAD_PIECE,
            unk_piece=UNK_PIECE,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(
            f"{out_path}: SentencePiece training failed ({_one_line(e)[:200]})"
        ) from None
    data = model.getvalue()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return TextTokenizer(data, name=str(out_path))
