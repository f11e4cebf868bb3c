"""A person with the console open during the benchmark: `python -m bench.console_viewer URL`.

Keeps the overview's event stream (`/events`) open, reading every event, and loads the overview and the jobs page
every 2 s, as an open browser tab and an impatient operator would. Used by the `cekura-console` poller
(`bench/pollers.py`) to measure what an open console costs the workers.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import httpx

#: Seconds between page loads.
DEFAULT_RELOAD_S = 2.0


def _follow(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with httpx.Client(timeout=None, trust_env=False) as http, http.stream("GET", f"{url}/events") as answer:
                for _ in answer.iter_lines():
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            time.sleep(0.5)


def main(argv: list[str]) -> int:
    url = argv[0].rstrip("/")
    stop = threading.Event()
    threading.Thread(target=_follow, args=(url, stop), daemon=True).start()
    with httpx.Client(timeout=30, trust_env=False) as http:
        while True:
            for page in ("/", "/jobs"):
                with contextlib.suppress(httpx.HTTPError):
                    http.get(url + page)
            time.sleep(DEFAULT_RELOAD_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
