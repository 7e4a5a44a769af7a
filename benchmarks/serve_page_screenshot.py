"""A screenshot of ``serve``'s browser page after a few seconds of conversation, made the way
``tests/test_browser.py`` runs the page: a tiny random Moshi workdir behind the server on
127.0.0.1, headless Chromium whose fake microphone plays a WAV, Start clicked.

    python benchmarks/serve_page_screenshot.py [--out docs/serve_page.png] [--seconds 5]
        [--workdir DIR --wav FILE.wav]

Needs selenium, chromium and chromedriver (as the test). Without ``--workdir`` it builds the
test's tiny workdir in a temporary folder. Prints one JSON object: the page's counters.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "serve_page.png"))
    ap.add_argument("--seconds", type=float, default=5.0, help="conversation before the shot")
    ap.add_argument("--workdir", help="a Moshi workdir (default: the tests' tiny one)")
    ap.add_argument("--wav", help="the fake microphone's WAV (with --workdir)")
    ap.add_argument("--size", default="1000x700", help="window size, WxH")
    args = ap.parse_args()

    from audiolm_jax.serve.server import SamplingOptions, ServeOptions, build_server
    from helpers import ServerThread, tiny_moshi_workdir
    from test_browser import chrome, converse, page_state

    if args.workdir:
        if not args.wav:
            ap.error("--workdir needs --wav (the fake microphone)")
        workdir, wav = args.workdir, args.wav
    else:
        workdir, wav, _ = tiny_moshi_workdir(pathlib.Path(tempfile.mkdtemp(prefix="serve_page_")))
    server = ServerThread(build_server(workdir, ServeOptions(
        max_sessions=1, sampling=SamplingOptions(text_temperature=2.0, text_top_k=0))))
    w, h = (int(x) for x in args.size.split("x"))
    driver = chrome(wav, size=(w, h))
    # Headless windows keep room for browser chrome: make the page itself WxH.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False})
    try:
        frames = int(args.seconds * 12.5)
        state = converse(driver, server.http_url("/"), timeout=args.seconds + 20, min_frames=frames)
        time.sleep(0.5)  # one more refresh of the counters
        state = page_state(driver)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
        server.stop()
    print(json.dumps({"out": args.out, **{k: v for k, v in state.items() if k != "text"},
                      "text_chars": len(state["text"])}))


if __name__ == "__main__":
    main()
