"""One TLS context per process for ktlo's HTTP clients.

Building an `ssl.SSLContext` loads the system's CA bundle: ~50 ms of CPU each time, which
httpx pays for every client made with `verify=True`. A context is safe to share between
clients and threads, so steps and health checks reuse these two.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def client_context(verify: bool = True) -> ssl.SSLContext:
    """The client context that checks certificates and host names, or one that does not."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx
