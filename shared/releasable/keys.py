"""The releasable set's Redis keys, and the event stream's name.

Every key starts with a prefix (`releasable` unless a caller, a test, names another one), so
that the relay, the reconciliation and the readers agree on where the sets are.
"""

from __future__ import annotations

PREFIX = "releasable"
# The lifecycle stream other services read with consumer groups (runbook: "The event stream").
STREAM = "numbers:events"
# The stream entry the relay writes when it finds Redis behind the store: events with ids in
# (`after_id`, `through_id`] may be missing from the stream (runbook: "The stream").
GAP = "gap"


def all_key(prefix: str = PREFIX) -> str:
    """Sorted set of every repurchasable number."""
    return f"{prefix}:all"


def account_key(account_id: str, prefix: str = PREFIX) -> str:
    """Sorted set of one account's repurchasable numbers."""
    return f"{prefix}:account:{account_id}"


def meta_key(prefix: str = PREFIX) -> str:
    """Hash describing the last successful reconciliation (runbook: "The releasable set")."""
    return f"{prefix}:meta"


def published_key(prefix: str = PREFIX) -> str:
    """Set, with the sets, by each successful reconciliation; gone from a Redis that lost its
    data (restarted empty) and deleted by the relay when it finds Redis behind the store:
    without it the sets are not published (`read_releasable` raises `NotPublished`)."""
    return f"{prefix}:published"


def accounts_key(prefix: str = PREFIX) -> str:
    """Set of the account ids that have a published sorted set."""
    return f"{prefix}:accounts"


def lock_key(prefix: str = PREFIX) -> str:
    """The writers' lock: the relay or the reconciliation's swap, one at a time."""
    return f"{prefix}:writer"


def applied_key(prefix: str = PREFIX) -> str:
    """Ids of events applied to Redis whose deletion from the outbox is not yet known to
    have committed (the relay removes them once it has)."""
    return f"{prefix}:relay:applied"


def relay_meta_key(prefix: str = PREFIX) -> str:
    """Hash of the relay's record in Redis: `last_success_at`, when a relay run last succeeded."""
    return f"{prefix}:relay:meta"
