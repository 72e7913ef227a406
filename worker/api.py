"""The HTTP API as `numbers-retention serve` runs it: uvicorn's factory, one per process.

Each uvicorn worker process (`--workers N` spawns them) builds its own application here, with
the service's logging, on the configured store.
"""

from __future__ import annotations

from starlette.applications import Starlette

from shared.api import create_app
from shared.settings import get_settings
from worker.logs import configure_logging

# SIGTERM: uvicorn stops accepting, lets requests in flight finish for up to this long, then
# closes the pool (the app's lifespan). Below compose's stop_grace_period (30 s).
GRACEFUL_SECONDS = 25


def app() -> Starlette:
    """The application of one server process."""
    configure_logging(get_settings())
    return create_app()


def serve(*, host: str, port: int, workers: int) -> None:
    """Serve the API until SIGTERM or SIGINT (uvicorn; its own access log off: ours has the
    request id)."""
    import uvicorn

    uvicorn.run(
        "worker.api:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
