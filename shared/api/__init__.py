"""The released-numbers API over HTTP: an ASGI application (Starlette), the `[api]` extra.

`create_app()` answers `GET /numbers/released`, `DELETE /numbers/{phoneNumber}` and
`POST /numbers/order` as the API page describes them, with the library's bodies and its error
envelope; `serve` runs it, or a platform mounts it in its own ASGI application. Importing
`shared` alone never imports this package (nor Starlette).
"""

try:
    import starlette  # noqa: F401 - only to say what is missing
except ImportError as error:  # pragma: no cover - the api extra is missing
    raise ImportError(
        "shared.api needs the api extra: pip install 'numbers-retention[api]'"
    ) from error

from shared.api.app import create_app
from shared.api.auth import Authenticate, bearer_key, key_store

__all__ = ["Authenticate", "bearer_key", "create_app", "key_store"]
