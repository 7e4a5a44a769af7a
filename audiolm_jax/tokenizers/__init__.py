"""Sample-level audio tokenizers (no learned parameters)."""

from audiolm_jax.tokenizers.mulaw import mulaw_decode, mulaw_encode, mulaw_vocab_size

__all__ = ["mulaw_encode", "mulaw_decode", "mulaw_vocab_size"]
