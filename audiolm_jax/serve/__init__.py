"""A real-time duplex Moshi server speaking Kyutai's websocket protocol (``/api/chat``), and
a script client. :mod:`.protocol` frames the messages, :mod:`.opus` carries 24 kHz Ogg-Opus
to and from the codec's rate, :mod:`.server` runs one frame loop for all sessions,
:mod:`.client` streams a WAV and measures the reply's latency."""
