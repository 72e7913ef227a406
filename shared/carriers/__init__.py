"""The carriers numbers are released at, one module per carrier (a plug-in family).

Each module `shared.carriers.<name>` has a `from_settings(settings)` that builds its adapter
(a `shared.carriers.base.Provider`) from the settings naming its credentials and base URL;
`none` is no carrier at all (nothing to call). Adding a carrier is adding its module (and its
settings, and its fake in tests/carriers/); nothing else changes.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, get_args

from shared.carriers.base import NoProvider, Provider
from shared.errors import ValidationError
from shared.settings import CarrierName, Settings, get_store_settings

CARRIERS: tuple[str, ...] = get_args(CarrierName)


def make_carrier(name: str, settings: Settings) -> Provider:
    """The adapter of the carrier `name`, configured by the settings."""
    if name == "none":
        return NoProvider()
    if name not in CARRIERS:
        raise ValueError(f"unknown carrier {name!r} (known: {', '.join(CARRIERS)})")
    adapter: Provider = _module(name).from_settings(settings)
    return adapter


def make_provider(settings: Settings) -> Provider:
    """The adapter of the default carrier, the one PROVIDER names."""
    return make_carrier(settings.provider, settings)


def scheduled_lanes(settings: Settings) -> list[str]:
    """The carriers' lanes beat schedules a purge task for (worker/app.py), one each, so that
    they run in parallel on different workers: the default carrier's (PROVIDER, which also
    takes the numbers stored without a carrier) first, then `none`'s (numbers held nowhere:
    no carrier call), then every other carrier whose credentials the settings give (its
    module's `configured`). A carrier without credentials gets no lane: a run of it would only
    end `provider_misconfigured`; its numbers stay overdue, visible in `status`."""
    found: list[str] = [settings.provider]
    if settings.provider != "none":
        found.append("none")
    found += [name for name in CARRIERS if name not in found and _module(name).configured(settings)]
    return found


def carrier_module(name: str, default: str = "telnyx") -> Any:
    """The module of carrier `name` (`default`'s for `none`, or a name without a module)."""
    try:
        return importlib.import_module(f"shared.carriers.{name}")
    except ImportError:
        return importlib.import_module(f"shared.carriers.{default}")


def _module(name: str) -> Any:
    return importlib.import_module(f"shared.carriers.{name}")


def number_carrier(carrier: object, provider_number_id: object) -> dict[str, str | None]:
    """A number's `carrier` and `provider_number_id` as stored: the carrier named (default:
    PROVIDER) and an id of that carrier's (its module's NUMBER_ID). With no carrier named and
    PROVIDER `none` (no carrier configured), the carrier stays NULL: the default carrier of
    each purge run, never "nothing to release"."""
    default = carrier is None
    name = get_store_settings().provider if default else carrier
    if name not in CARRIERS:
        raise ValidationError(
            f"Unknown carrier {str(name)[:20]!r}.",
            code="invalid_carrier",
            fix=f"Name one of: {', '.join(CARRIERS)}.",
        )
    stored = None if default and name == "none" else str(name)
    if provider_number_id is None:
        return {"carrier": stored, "provider_number_id": None}
    pattern: re.Pattern[str] = _module("telnyx" if name == "none" else str(name)).NUMBER_ID
    if not isinstance(provider_number_id, str) or not pattern.fullmatch(provider_number_id):
        raise ValidationError(
            f"provider_number_id must be an id of {'Telnyx' if name == 'none' else name}'s "
            "numbers.",
            code="invalid_provider_number_id",
            fix="Pass the id as the carrier gave it (Telnyx: its decimal id; Twilio: the "
            "number's SID, PN and 32 hex digits; Bandwidth: the telephone number's 10 digits).",
        )
    if name == "none":  # an id upstream, at no known carrier: the run's default carrier
        stored = None
    return {"carrier": stored, "provider_number_id": provider_number_id}
