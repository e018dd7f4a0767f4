"""Process-wide bounds on huggingface_hub's HTTP client (it has no timeout of its own)."""

from __future__ import annotations

import threading

import httpx2
from huggingface_hub import set_client_factory

# Private, and deliberately so: huggingface_hub 2.x exports `set_client_factory`,
# `get_session` and `close_session` but neither its default factory nor the request
# hook inside it, and building our own client would drop that hook (headers, offline
# mode). pyproject pins huggingface_hub <3 for this import; test_store covers it.
from huggingface_hub.utils._http import default_client_factory

_http_lock = threading.Lock()
_http_timeout_s: float | None = None


def configure_hub_http(timeout_s: float) -> None:
    """Bound every huggingface_hub HTTP request to ``timeout_s`` (process-wide).

    huggingface_hub shares one httpx client with no timeout, and some calls
    (``create_commit``, ``create_repo``) take no timeout argument, so a stalled Hub
    would block a publish forever. This installs a client factory whose requests
    get ``timeout_s`` wherever the library left a timeout unset. Call it once at
    start-up; changing the value replaces the shared client.
    """
    if not timeout_s > 0:
        raise ValueError("timeout_s must be > 0")
    global _http_timeout_s
    with _http_lock:
        if _http_timeout_s == timeout_s:
            return

        def bound(request: httpx2.Request) -> None:
            timeouts = request.extensions.get("timeout")
            if isinstance(timeouts, dict) and None in timeouts.values():
                request.extensions["timeout"] = {
                    name: timeout_s if value is None else value for name, value in timeouts.items()
                }

        def factory() -> httpx2.Client:
            # The library's own client (event hooks, redirects, proxies), plus bounds.
            client = default_client_factory()
            client.timeout = httpx2.Timeout(timeout_s)
            hooks = client.event_hooks
            client.event_hooks = {
                "request": [*hooks["request"], bound],
                "response": list(hooks["response"]),
            }
            return client

        set_client_factory(factory)
        _http_timeout_s = timeout_s
