"""The ledger of disconnections: what each tombstone records about how its number left.

Every tombstone carries the carrier that held the number, how the carrier proved the release
(`release_proof`), what was removed from the number there first (`detach_steps`, see
shared/detach.py), and the UTC date and the reason of its permanent disconnection.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from shared.models import Base, PurgedNumber


def release_proof(resolution: str, provider_number_id: str | None) -> dict[str, Any]:
    """How the carrier proved a release, as the release checked it (shared/provider.py)."""
    if resolution == "provider":  # a 2xx answering the phone-number record of that very id
        return {
            "resolution": resolution,
            "call": f"DELETE /v2/phone_numbers/{provider_number_id}",
            "record": {"id": provider_number_id, "record_type": "phone_number"},
        }
    if resolution == "not_found":  # gone already, for a key proven to hold this store's numbers
        return {
            "resolution": resolution,
            "call": f"DELETE /v2/phone_numbers/{provider_number_id}",
            "error": "HTTP 404 in Telnyx's error shape",
        }
    return {"resolution": resolution}


def record_proofs(session: Session, proofs: dict[int, dict[str, Any]]) -> None:
    """Write each tombstoned number's release proof and detach steps, in the caller's
    transaction, after its tombstone (`proofs`: number id -> {"release", "detach"})."""
    if not proofs:
        return
    stones = Base.metadata.tables[PurgedNumber.__tablename__]
    session.execute(
        update(stones)
        .where(stones.c.number_id == bindparam("b_number_id"))
        .values(
            release_proof=bindparam("b_release", type_=stones.c.release_proof.type),
            detach_steps=bindparam("b_detach", type_=stones.c.detach_steps.type),
        ),
        [
            {"b_number_id": number_id, "b_release": proof["release"], "b_detach": proof["detach"]}
            for number_id, proof in proofs.items()
        ],
    )
