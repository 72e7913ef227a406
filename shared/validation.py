"""Input checks shared by the public functions; each failure is a 400 with a fix hint."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import pycountry

from shared.errors import ValidationError
from shared.models import A2P_STATUSES, E164_PATTERN, LABEL_MAX, PLANS

_E164 = re.compile(E164_PATTERN)
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,8}(\.[0-9]{1,4})?")
_NUMBER_TYPE = re.compile(r"^[a-z][a-z_]{0,31}$")
MAX_PRICE = Decimal("99999999")


def _shown(value: object) -> str:
    """How a refused value is named in its message: a short string as it is, else its type."""
    return value if isinstance(value, str) and len(value) <= 40 else type(value).__name__


def account_id(value: object) -> str:
    """A non-empty account id of at most 64 printable characters."""
    fix = "Pass the account's id as it was given by open_account, e.g. 'acc_123'."
    return short_id(value, name="account_id", fix=fix)


def phone_number(value: object) -> str:
    """An E.164 number: '+', a non-zero digit, at most 15 digits in all."""
    if not isinstance(value, str) or not _E164.fullmatch(value):
        raise ValidationError(
            f"phone_number {_shown(value)!r} is not in E.164 format.",
            code="invalid_phone_number",
            fix="Write the number as '+' then country code and digits only, e.g. +14155550123.",
        )
    return value


def country_code(value: object) -> str:
    """An ISO 3166-1 alpha-2 code in upper case, e.g. US."""
    if (
        not isinstance(value, str)
        or not re.fullmatch(r"[A-Z]{2}", value)
        or pycountry.countries.get(alpha_2=value) is None
    ):
        raise ValidationError(
            f"country_code {_shown(value)!r} is not an ISO 3166-1 alpha-2 code.",
            code="invalid_country_code",
            fix="Use two upper-case letters of an existing country, e.g. US, GB, DE.",
        )
    return value


def number_type(value: object) -> str:
    """A number type such as local, toll_free, mobile."""
    if not isinstance(value, str) or not _NUMBER_TYPE.fullmatch(value):
        raise ValidationError(
            "number_type must be lower-case letters and underscores, at most 32.",
            code="invalid_number_type",
            fix="Use the provider's type name, e.g. local, toll_free, mobile.",
        )
    return value


def monthly_price(value: object) -> Decimal:
    """A price in USD: a finite, non-negative amount with at most 4 decimal places."""
    fix = "Pass the monthly price in USD as a decimal string or number, e.g. '1.00'."
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise ValidationError(
            f"monthly_price must be a number, got {type(value).__name__}.",
            code="invalid_price",
            fix=fix,
        )
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise ValidationError(
            f"monthly_price {value[:40]!r} is not a plain decimal amount.",
            code="invalid_price",
            fix=fix,
        )
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValidationError(
            "monthly_price is not a number.", code="invalid_price", fix=fix
        ) from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE:
        raise ValidationError(
            "monthly_price must be a finite amount from 0 to 99,999,999 USD.",
            code="invalid_price",
            fix=fix,
        )
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:
        raise ValidationError(
            "monthly_price has more than 4 decimal places.", code="invalid_price", fix=fix
        )
    return price


def _is_text(value: str) -> bool:
    """False for a string that no UTF-8 store can hold: a lone surrogate (JSON allows
    '\\ud800'), which the database driver would reject with a raw encoding error."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: object, *, name: str, limit: int, printable: bool = False) -> str | None:
    """Optional free text (a label, a reason) of at most `limit` characters; empty means none.

    `printable`: one line of printable characters only, for text printed on an operator's
    terminal (`status`, `holds`): an escape sequence in it would run there, a bidi override or
    a carriage return would disguise what is printed around it.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value or not _is_text(value):
        raise ValidationError(
            f"{name} must be text of at most {limit} characters, without NUL.",
            code=f"invalid_{name}",
            fix=f"Send at most {limit} characters of text, without NUL or lone surrogates.",
        )
    if printable and not value.isprintable():
        raise ValidationError(
            f"{name} must be one line of printable text: it holds a control or format "
            "character (a terminal escape sequence, a tab, a line break, a bidi override).",
            code=f"invalid_{name}",
            fix=f"Write {name} as plain text on one line.",
        )
    return value


def label(value: object) -> str | None:
    """An optional label of at most 255 characters; empty means none."""
    return text(value, name="label", limit=LABEL_MAX)


def plan(value: object) -> str:
    """One of the known plans: free or paid."""
    if value not in PLANS:
        raise ValidationError(
            f"plan must be one of {', '.join(sorted(PLANS))}.",
            code="invalid_plan",
            fix="Open the account with plan='free' or plan='paid'.",
        )
    assert isinstance(value, str)
    return value


def a2p_status(value: object) -> str:
    """A 10DLC campaign status: pending, testing or approved."""
    if value not in A2P_STATUSES:
        raise ValidationError(
            f"status must be one of {', '.join(A2P_STATUSES)}.",
            code="invalid_a2p_status",
            fix="Pass the campaign's 10DLC status: pending, testing or approved.",
        )
    assert isinstance(value, str)
    return value


def short_id(value: object, *, name: str, fix: str | None = None) -> str:
    """An id (an account's, a campaign's, an operator's): printable, at most 64 characters.

    `fix`: the hint of the refusal (default: pass it as the provider gave it).
    """
    if not isinstance(value, str) or not value or len(value) > 64 or not value.isprintable():
        raise ValidationError(
            f"{name} must be a non-empty string of at most 64 printable characters.",
            code=f"invalid_{name}",
            fix=fix or f"Pass {name} as the provider gave it.",
        )
    return value


def count(value: object, *, name: str, limit: int) -> int:
    """A whole number from 1 to `limit` (a batch size, a row bound); '10' or 10.0 is refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValidationError(
            f"{name} must be a whole number from 1 to {limit:,}, got {value!r:.40}.",
            code=f"invalid_{name}",
            fix=f"Pass {name} as an int from 1 to {limit}, or leave it out (the settings' value).",
        )
    return value


def seconds(value: object, *, name: str, limit: float) -> float:
    """A finite, positive number of seconds of at most `limit`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= limit  # also refuses nan
    ):
        raise ValidationError(
            f"{name} must be a number of seconds above 0 and at most {limit:g}, got {value!r:.40}.",
            code=f"invalid_{name}",
            fix=f"Pass {name} as a number such as 60, or leave it out (the settings' value).",
        )
    return float(value)


def flag(value: object, *, name: str) -> bool:
    """A real boolean; strings like 'false' are refused, not guessed."""
    if not isinstance(value, bool):
        raise ValidationError(
            f"{name} must be true or false, got {type(value).__name__}.",
            code=f"invalid_{name}",
            fix=f"Pass {name} as a boolean.",
        )
    return value
