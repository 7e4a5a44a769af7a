"""Cost of an hour-long input file: load time and peak memory, printed as JSON.

    python benchmarks/long_file.py [--minutes 60] [--rate 16000]

Writes a sparse 16-bit mono WAV of silence (instant, no disk blocks), then runs each case in
its own process so each peak RSS is that case's alone: the whole file through ``load_audio``
(at the file's rate and resampled to 24 kHz), one 60 s segment as a ``FolderSource`` item
(what training reads), μ-law tokenization of the whole file, and codec tokenization of it
(the tiny CNN codec with random weights; ``LoadedCodec`` encodes long files in chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

CASES = {
    "load_audio_whole_file": "from audiolm_jax.data import load_audio\n"
                             "load_audio(PATH, RATE)",
    "load_audio_whole_file_resampled_24k": "from audiolm_jax.data import load_audio\n"
                                           "load_audio(PATH, 24000)",
    "folder_source_one_segment": "from audiolm_jax.data import FolderSource\n"
                                "src = FolderSource(os.path.dirname(PATH), RATE)\n"
                                "src[len(src) // 2]",
    "mulaw_tokenize_whole_file": "from audiolm_jax.lm.tokens import tokenize_corpus\n"
                                 "tokenize_corpus([PATH], PATH + '.tok', tokenizer='mulaw', "
                                 "sample_rate=RATE)",
    # The tiny CNN codec (random weights, 16 kHz) through LoadedCodec: chunked encoding.
    "codec_tokenize_whole_file": "import numpy as np\n"
                                 "from audiolm_jax.codec.config import tiny_cnn_config\n"
                                 "from audiolm_jax.codec.inference import LoadedCodec\n"
                                 "from audiolm_jax.codec.model import build_codec\n"
                                 "from audiolm_jax.lm.tokens import tokenize_corpus\n"
                                 "sys.path.insert(0, TESTS)\n"
                                 "from helpers import fast_params\n"
                                 "c = tiny_cnn_config()\n"
                                 "v = fast_params(build_codec(c), np.zeros((1, 4096), np.float32))\n"
                                 "codec = LoadedCodec(c, v['params'], v['vq_stats'], step=0)\n"
                                 "tokenize_corpus([PATH], PATH + '.ctok', codec=codec)",
}

RUNNER = """
import os, resource, sys, time
PATH, RATE, TESTS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import numpy, soundfile, librosa  # imported before the baseline, as in a real run
import audiolm_jax.data, audiolm_jax.lm.tokens
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{code}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, base / 1024, peak / 1024)
"""


def write_silence(path: str, seconds: int, rate: int) -> None:
    frames = seconds * rate
    data = 2 * frames
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
                + b"data" + struct.pack("<I", data))
        f.truncate(44 + data)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--rate", type=int, default=16000)
    args = parser.parse_args()
    results = {"minutes": args.minutes, "rate": args.rate}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.wav")
        write_silence(path, args.minutes * 60, args.rate)
        tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "tests")  # tests/helpers.py: random codec weights, fast
        for name, code in CASES.items():
            out = subprocess.run([sys.executable, "-c", RUNNER.format(code=code), path,
                                  str(args.rate), tests], capture_output=True, text=True,
                                 check=True)
            seconds, base, peak = map(float, out.stdout.split()[-3:])
            results[name] = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak),
                             "added_rss_mb": round(peak - base)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
