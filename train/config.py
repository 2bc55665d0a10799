"""Training configuration: a validated dataclass, saved into every run directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shelfsight.edge_app.core.errors import ConfigError
from shelfsight.train.model import BACKBONES

if TYPE_CHECKING:
    from shelfsight.train.augment import AugmentConfig


def augment_problems(augment: dict[str, Any]) -> list[str]:
    """Names the augmentation overrides that AugmentConfig does not have or that have the wrong shape."""
    from shelfsight.train.augment import AugmentConfig

    defaults = {f.name: f.default for f in dataclasses.fields(AugmentConfig)}
    problems = []
    for key, value in augment.items():
        if key not in defaults:
            problems.append(f"unknown augment key {key!r} (known: {sorted(defaults)})")
        elif isinstance(defaults[key], tuple) != isinstance(value, (list, tuple)):
            problems.append(f"augment {key} must look like {defaults[key]!r}")
    return problems


@dataclass
class TrainConfig:
    sources: list[str] = field(default_factory=list)
    exclude_products: list[str] = field(default_factory=list)
    backbone: str = "efficientnet-lite0"
    pretrained: bool = True
    input_size: int = 224
    embedding_dim: int = 256
    epochs: int = 12
    batch_size: int = 32
    steps_per_epoch: int = 0  # 0: one pass over the data
    learning_rate: float = 4e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    temperature: float = 0.05  # normalised-softmax temperature (proxy-based metric learning)
    train_from_block: int = 4  # backbone blocks below this stay frozen; BN statistics always frozen
    seed: int = 0
    cache_images: bool = True
    # A finished run whose embedder starts this one (a second, gentler stage of training).
    init_from: str = ""
    # Overrides of train.augment.AugmentConfig fields, e.g. {"rotate_prob": 0.5}.
    augment: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        problems = []
        if not self.sources:
            problems.append("at least one data source is needed")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone must be one of {BACKBONES}")
        if not 32 <= self.input_size <= 512:
            problems.append("input_size must be in 32..512")
        if not 8 <= self.embedding_dim <= 2048:
            problems.append("embedding_dim must be in 8..2048")
        if self.epochs < 1 or self.batch_size < 2 or self.steps_per_epoch < 0:
            problems.append("epochs >= 1, batch_size >= 2 and steps_per_epoch >= 0 are required")
        if not 0 < self.learning_rate < 1 or not 0 < self.temperature <= 1:
            problems.append("learning_rate and temperature must be in (0, 1)")
        problems += augment_problems(self.augment)
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        return self

    def augment_config(self) -> AugmentConfig:
        from shelfsight.train.augment import AugmentConfig

        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()}
        return AugmentConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys: {unknown}")
        return cls(**data).validate()

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read training config ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: training config must be a JSON object")
        return cls.from_dict(data)
