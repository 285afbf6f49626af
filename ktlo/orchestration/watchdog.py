"""A `ktlo run` that loses its Prefect server says so within seconds.

Without it Prefect's client retries every call with back-off: the operator saw
`internal error: ConnectError` after 81 s and got the prompt back after 223 s, with the
run still Running in Prefect. The watchdog asks the server's health endpoint every second;
three refused connections in a row (the server is gone), or half a minute without any
answer, and it calls `on_lost` with the reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

INTERVAL_S = 1.0
REFUSED_LIMIT = 3
SILENT_LIMIT_S = 30.0


class Watchdog:
    def __init__(self, api_url: str, on_lost: Callable[[str], None]):
        self.url = f"{api_url.rstrip('/')}/health"
        self.on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ktlo-api-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _watch(self) -> None:
        refused = 0
        answered = time.monotonic()
        # Plain HTTP needs no certificates; loading them costs a tenth of a second of CPU.
        with httpx.Client(timeout=5, verify=self.url.startswith("https:")) as client:
            while not self._stop.wait(INTERVAL_S):
                try:
                    client.get(self.url)
                    refused, answered = 0, time.monotonic()
                    continue
                except httpx.ConnectError:
                    refused += 1
                except httpx.HTTPError:
                    refused = 0
                silent = time.monotonic() - answered
                if refused >= REFUSED_LIMIT or silent >= SILENT_LIMIT_S:
                    if not self._stop.is_set():
                        reason = (
                            "connection refused" if refused else f"no answer for {silent:.0f} s"
                        )
                        self.on_lost(reason)
                    return
