"""Compatibility: the names this module had before the carriers became a family of modules
(shared/carriers/). New code imports from `shared.carriers`."""

from __future__ import annotations

from shared.carriers import make_carrier, make_provider
from shared.carriers.base import (
    REFUSED_CODE,
    RELEASED,
    Cause,
    NoProvider,
    Outcome,
    Provider,
    Resolution,
    UpstreamResult,
    WaitsOn,
)
from shared.carriers.telnyx import TelnyxProvider, misconfigured, provider_number_id, refused

__all__ = [
    "REFUSED_CODE",
    "RELEASED",
    "Cause",
    "NoProvider",
    "Outcome",
    "Provider",
    "Resolution",
    "TelnyxProvider",
    "UpstreamResult",
    "WaitsOn",
    "make_carrier",
    "make_provider",
    "misconfigured",
    "provider_number_id",
    "refused",
]
