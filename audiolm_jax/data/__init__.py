"""Audio data: a built-in synthetic speech corpus, audio file / TFDS sources, grain pipeline."""

from audiolm_jax.data.audio_io import AUDIO_EXTENSIONS, AudioDecodeError, load_audio, save_wav
from audiolm_jax.data.pipeline import (AudioIterator, SkipStats, iter_eval_batches,
                                       make_audio_iterator)
from audiolm_jax.data.sources import (FolderSource, TfdsAudioSource, ensure_readable,
                                      find_audio_files, make_source)
from audiolm_jax.data.synthetic import (VOICES, SyntheticSpeechCorpus, Voice,
                                        synthesize_utterance, write_synthetic_wavs)

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioDecodeError",
    "AudioIterator",
    "FolderSource",
    "SkipStats",
    "SyntheticSpeechCorpus",
    "TfdsAudioSource",
    "VOICES",
    "Voice",
    "ensure_readable",
    "find_audio_files",
    "iter_eval_batches",
    "load_audio",
    "make_audio_iterator",
    "make_source",
    "save_wav",
    "synthesize_utterance",
    "write_synthetic_wavs",
]
