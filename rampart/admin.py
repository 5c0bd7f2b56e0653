"""The admin listener every Rampart process serves: /metrics, /healthz and /readyz.

/healthz answers 200 while the process runs its event loop; /readyz answers 200 only while the
process can do its work (for the gateway: Kafka reachable and API keys loaded), so a load
balancer or Kubernetes stops sending traffic to a replica that would only answer 503.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["build_admin_app", "split_listen"]


def build_admin_app(registry: CollectorRegistry, ready: Callable[[], bool]) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
