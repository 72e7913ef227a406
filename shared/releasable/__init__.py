"""The releasable set: repurchasable numbers in Redis sorted sets, scored by their deadline.

The store is the source of truth; these sets are a copy for fast reads. The parts, one job each:
`keys` (where the sets live, the stream's name), `sets` (a lifecycle event and what it changes
in the sets), `fencing` (the writers' lock, and the fence every write goes through), `relay`
(applies committed events from the outbox as they come), `reconcile` (rebuilds the sets from
the store, hourly and on demand, and reports the drift it repaired), `record` (the
reconciliation's last success and failure in Redis), `read` (the readers' side:
`read_releasable`). The relay and the reconciliation's swap take turns under one Redis lock,
and every write is fenced by it.
"""

from shared.releasable.read import NotPublished, read_releasable

__all__ = ["NotPublished", "read_releasable"]
