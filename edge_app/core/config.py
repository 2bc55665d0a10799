"""The one strict base every configuration model derives from."""

from __future__ import annotations

import sys

from pydantic import BaseModel, ConfigDict

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    pass


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not fall back to a default on a kiosk nobody watches); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
