"""Checks on what clients send: teach forms and search parameters. Every refusal is an InputError naming the problem."""

from __future__ import annotations

import unicodedata
from typing import Any, Mapping

from shelfsight.edge_app.core.errors import InputError

MAX_K = 50  # results a search returns at most; also how deep filters look into the ranking
TEACH_TEXT_FIELDS = ("description", "category")
TEACH_FLAGS = ("add_to_existing", "confirm_similar")
# Longest text each field takes (characters): a clerk types a name, not a document.
TEXT_LIMITS = {"product_id": 200, "name": 200, "description": 2000, "category": 100, "filter": 200}
ATTRIBUTE_PREFIX = "attribute."
MAX_FILTERS = 10  # filter parameters per search, and values per filter: a person picks a few


def shown(name: object) -> str:
    """A client's field name as it may be echoed back: bounded, ASCII, no raw control characters."""
    return str(name)[:40].encode("ascii", "backslashreplace").decode()


def printable(value: Any, key: str, limit_key: str | None = None) -> str:
    """`value` stripped, if it is text a person could type: bounded, no control or lone surrogate code points."""
    if not isinstance(value, str):
        raise InputError(f"{key} must be text")
    limit = TEXT_LIMITS[limit_key or key]
    if len(value) > limit:
        raise InputError(f"{key} is longer than {limit} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise InputError(f"{key} may hold only printable characters")
    return value.strip()


def _flag(value: Any) -> bool:
    return value in (True, "true", "on", "1")


def refuse_unknown(form: Mapping[str, Any], allowed: set[str], expected: str) -> None:
    """InputError naming the fields of `form` that are not `allowed` (at most 10, echoed safely)."""
    unknown = set(form) - allowed
    if unknown:
        names = ", ".join(sorted(shown(k) for k in unknown)[:10])
        raise InputError(f"unknown fields: {names} (expected {expected})")


def teach_fields(form: Any) -> tuple[str, str, dict[str, Any]]:
    """(product_id, name, optional fields) from a JSON object or a form."""
    if not isinstance(form, dict):
        raise InputError("send a JSON object or a form with product_id and name")
    allowed = {"product_id", "name", "price", *TEACH_FLAGS, *TEACH_TEXT_FIELDS}
    refuse_unknown(form, allowed, "product_id, name, price, description, category")
    product_id, name = form.get("product_id"), form.get("name")
    if not isinstance(product_id, str) or not product_id.strip():
        raise InputError("product_id is required")
    if not isinstance(name, str) or not name.strip():
        raise InputError("name is required")
    printable(product_id, "product_id")  # the catalog's own id check follows in teach; it keeps the spaces rule
    name = printable(name, "name")
    fields: dict[str, Any] = {}
    for key in TEACH_TEXT_FIELDS:
        value = form.get(key)
        if value not in (None, ""):
            fields[key] = printable(value, key)
    price = form.get("price")
    if price not in (None, ""):
        if isinstance(price, bool):
            raise InputError("price must be a number")
        try:
            fields["price"] = float(price)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError("price must be a number") from exc
        if not 0 <= fields["price"] < 1e9:
            raise InputError("price must be between 0 and 1e9")
    for key in TEACH_FLAGS:
        if _flag(form.get(key)):
            fields[key] = True
    return product_id, name, fields


def search_parameters(args: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
    """(k, filters) from a search's query string: `k`, `category` (repeatable: any of them), `attribute.<name>`."""
    k, filters = 5, {}
    if len(args) > MAX_FILTERS + 1:
        raise InputError(f"at most {MAX_FILTERS} filters")
    for key, values in args.items():
        if len(values) > MAX_FILTERS:
            raise InputError(f"{shown(key)}: at most {MAX_FILTERS} values")
        if key == "k":
            text = values[0].strip() if len(values) == 1 else ""
            if not (text.isascii() and text.lstrip("-").isdigit()):  # "²" is a digit to str.isdigit, not to int()
                raise InputError("k must be one integer")
            k = int(text)
            if not 1 <= k <= MAX_K:
                raise InputError(f"k must be between 1 and {MAX_K}")
        elif key == "category":
            filters["category"] = [printable(v, "category", "filter") for v in values]
        elif key.startswith(ATTRIBUTE_PREFIX) and 0 < len(key) - len(ATTRIBUTE_PREFIX) <= 64:
            name = printable(key[len(ATTRIBUTE_PREFIX) :], "attribute name", "filter")
            filters[name] = [printable(v, key, "filter") for v in values]
        else:
            raise InputError(f"unknown query parameter {shown(key)!r}; use k, category or attribute.<name>")
    return k, {key: wanted[0] if len(wanted) == 1 else wanted for key, wanted in filters.items()}
