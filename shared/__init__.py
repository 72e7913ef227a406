"""The number-store library: the retention rule, the released list, release and repurchase.

Importing it reads no setting: the store settings (shared/settings.py, `StoreSettings`) are
read when first needed, and nothing here reads a worker setting.
"""

from datetime import timedelta

from shared.errors import (
    ApiError,
    InternalError,
    ProviderError,
    UnauthorizedError,
    UsageLimitError,
    ValidationError,
)
from shared.lifecycle import (
    assign_campaign,
    open_account,
    register_number,
    release_number,
    repurchase_number,
    set_purge_hold,
)
from shared.listing import released_numbers_body
from shared.number_orders import find_order, order_number
from shared.purge import PurgeReport, purge_expired
from shared.releasable import NotPublished, read_releasable
from shared.retention import (
    is_purgeable,
    is_repurchasable,
    repurchase_deadline,
    retention_window,
)

__all__ = [
    "ApiError",
    "InternalError",
    "NotPublished",
    "ProviderError",
    "PurgeReport",
    "UnauthorizedError",
    "UsageLimitError",
    "ValidationError",
    "assign_campaign",
    "find_order",
    "is_purgeable",
    "is_repurchasable",
    "open_account",
    "order_number",
    "purge_expired",
    "read_releasable",
    "register_number",
    "release_number",
    "released_numbers_body",
    "repurchase_deadline",
    "repurchase_number",
    "retention_window",
    "set_purge_hold",
]


def __getattr__(name: str) -> timedelta:
    # `shared.RETENTION`: the window of the store settings, read at first use, not at import.
    if name == "RETENTION":
        return retention_window()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
