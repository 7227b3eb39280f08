"""The Stripe SDK's HTTP transport on urllib3, without `requests` between them.

`stripe.RequestsClient` spends about a tenth of an API worker's CPU per top-up in `requests` itself
(merging the environment's proxy and certificate settings into every call, preparing the request
through hooks, cookies and adapters), on top of urllib3, which does the exchange. This client hands
the SDK's request to a urllib3 pool directly. The SDK still builds every call, signs it with the
idempotency key and parses every answer: only the transport changes.

It keeps what the service relied on from the requests transport:
- one keep-alive pool per process, `max_connections` per host (`GATEWAY_MAX_CONNECTIONS`);
- Stripe's own certificate bundle (`stripe.ca_bundle_path`), as `RequestsClient` passes it;
- the environment's proxy (`HTTPS_PROXY` / `HTTP_PROXY`, `NO_PROXY`), read once per host;
- the same timeout for connecting and for each read, and compressed answers accepted;
- every transport failure (refused, reset, timed out, TLS) raised as `stripe.APIConnectionError`,
  which the adapter maps to `GatewayUnavailableError` (outcome unknown), as before;
- no CPU slot held during the call: GuardedGateway gives it back around the whole call, as before.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe
import urllib3

# What `requests` added to every call: compressed answers (urllib3 decodes them).
_DEFAULT_HEADERS = {"Accept-Encoding": "gzip, deflate"}


class Urllib3Client(stripe.HTTPClient):
    name = "urllib3"

    def __init__(self, timeout: float, max_connections: int) -> None:
        super().__init__(verify_ssl_certs=True)
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._max_connections = max_connections
        self._direct = self._manager(None)
        self._managers: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def _manager(self, proxy: str | None) -> urllib3.PoolManager:
        options: dict[str, Any] = {"num_pools": 4, "maxsize": self._max_connections, "block": False,
                                   "retries": False, "cert_reqs": "CERT_REQUIRED", "ca_certs": stripe.ca_bundle_path}
        return urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)

    def _for(self, url: str) -> urllib3.PoolManager:
        """The pool for this URL's host: direct, or through the environment's proxy for its scheme."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        manager = self._managers.get(key)
        if manager is None:
            proxy = urllib.request.getproxies().get(parts.scheme)
            if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
                proxy = None
            with self._lock:
                manager = self._managers.setdefault(key, self._manager(proxy) if proxy else self._direct)
        return manager

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None, *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        """The body as bytes, as `RequestsClient` gives it (the SDK decodes it)."""
        response = self._send(method, url, headers, post_data, stream=False)
        return response.data, response.status, response.headers

    def request_stream(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None, *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        response = self._send(method, url, headers, post_data, stream=True)
        return response, response.status, response.headers

    def _send(
        self, method: str, url: str, headers: Mapping[str, str] | None, body: Any, *, stream: bool
    ) -> urllib3.BaseHTTPResponse:
        try:
            return self._for(url).request(
                method.upper(), url, body=body, headers={**_DEFAULT_HEADERS, **(headers or {})},
                timeout=self._timeout, redirect=False, preload_content=not stream,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise stripe.APIConnectionError(
                f"Unexpected error communicating with Stripe. (Network error: {type(exc).__name__}: {exc})",
                should_retry=not isinstance(exc, urllib3.exceptions.SSLError),
            ) from exc

    def _all_managers(self) -> list[urllib3.PoolManager]:
        return [self._direct, *(m for m in self._managers.values() if m is not self._direct)]

    def connections_opened(self) -> int:
        """Connections this client has opened so far, over all its pools (a kept-alive one counts once)."""
        return sum(m.pools[key].num_connections for m in self._all_managers() for key in m.pools.keys())

    def close(self) -> None:
        for manager in self._all_managers():
            manager.clear()
