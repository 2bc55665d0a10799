"""The one strict base every configuration model derives from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not fall back to a default on a kiosk nobody watches); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
