"""The kiosk config reference (docs/config.md), generated from the config models themselves.

Every field's type, default and `description` come from the pydantic models, so the page
cannot drift from what the kiosk accepts; `scripts/config_reference.py` writes it and a test
checks the committed page is current.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from shelfsight.edge_app.kiosk.config import KioskConfig

INTRO = """\
# Kiosk configuration reference

Generated from the config models by `scripts/config_reference.py`; do not edit by hand.

The kiosk reads one TOML (or JSON) file: `shelfsight kiosk --config kiosk.toml`. Unknown keys
anywhere are errors, and `shelfsight kiosk --config kiosk.toml --validate-config` also checks
that the model, catalog, camera file or folder and sync keys it names are usable. Relative
paths in `[model]`, `[catalog]` and `[camera]` are taken from the config file's folder.
Example files: `deploy/examples/`.
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models a field holds (several for a union such as [camera]'s)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "none"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = [a for a in typing.get_args(annotation) if not isinstance(a, FieldInfo)]
        if origin in (typing.Union, types.UnionType):
            return " \\| ".join(_type_name(a) for a in args)
        if origin is typing.Annotated:
            return _type_name(args[0])
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        if issubclass(annotation, Path):
            return "path"
        if issubclass(annotation, Enum):
            return " \\| ".join(json.dumps(m.value) for m in annotation)
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "absent"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, Enum):
        value = value.value
    return f"`{json.dumps(value)}`"


def _table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if _models_in(info.annotation):
            continue  # a sub-section: it gets its own heading
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {description} |")
    return lines


def _sections(model: type[BaseModel], prefix: str) -> list[str]:
    out: list[str] = []
    for name, info in model.model_fields.items():
        variants = _models_in(info.annotation)
        for sub in variants:
            kind = sub.model_fields.get("type")
            if len(variants) > 1 and kind is not None:
                out += ["", f"## [{prefix}{name}] `type = {json.dumps(kind.default)}`", "", f"{kind.description}.", ""]
            else:
                required = " Required." if info.is_required() else ""
                out += ["", f"## [{prefix}{name}]", "", f"{info.description}.{required}", ""]
            out += _table(sub)
            out += _sections(sub, f"{prefix}{name}.")
    return out


def config_reference() -> str:
    """The Markdown reference of every kiosk config section and key."""
    return INTRO + "\n".join(_sections(KioskConfig, "")) + "\n"
