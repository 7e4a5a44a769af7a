"""Moshi's text stream ("inner monologue"), data side: word alignments, the SentencePiece text
tokenizer, and the per-frame token stream built from them.

- :mod:`audiolm_jax.text.alignment`: moshi-finetune's alignment JSON (beside each stereo WAV) read
  into :class:`Word` lists, malformed files rejected with the file named;
- :mod:`audiolm_jax.text.tokenizer`: a SentencePiece wrapper and a trainer for small models that
  keep Moshi's special ids (0: EPAD, 3: PAD);
- :mod:`audiolm_jax.text.stream`: the 12.5 Hz stream of text ids, built by moshi-finetune's rules.

Nothing here imports JAX; ``sentencepiece`` is imported only when a tokenizer is loaded or trained.
"""

from audiolm_jax.text.alignment import (
    DEFAULT_SPEAKERS,
    DEFAULT_TOLERANCE_S,
    MAIN_SPEAKER,
    AlignmentError,
    Word,
    alignment_path,
    load_alignment,
)
from audiolm_jax.text.stream import (
    FRAME_RATE,
    TEXT_EPAD_ID,
    TEXT_PAD_ID,
    ZERO_TOKEN_ID,
    crop_words,
    text_stream,
    word_tokens,
)
from audiolm_jax.text.tokenizer import TextTokenizer, train_tokenizer

__all__ = [
    "Word",
    "AlignmentError",
    "alignment_path",
    "load_alignment",
    "DEFAULT_SPEAKERS",
    "DEFAULT_TOLERANCE_S",
    "MAIN_SPEAKER",
    "text_stream",
    "crop_words",
    "word_tokens",
    "FRAME_RATE",
    "TEXT_PAD_ID",
    "TEXT_EPAD_ID",
    "ZERO_TOKEN_ID",
    "TextTokenizer",
    "train_tokenizer",
]
