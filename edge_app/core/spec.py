"""The sidecar that travels with every exported model.

`model.tflite` ships with `model.tflite.json`. The sidecar records what an
edge device needs to use the model correctly (input size, embedding size,
preprocessing) and the SHA-256 of the model bytes. The loader recomputes the
hash: a model that does not match its sidecar is refused, so a catalog can
never be searched with embeddings from a different model by accident.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shelfsight.edge_app.core.errors import ModelError

SPEC_VERSION = 1
PREPROCESSING = "fit_square: centre square crop, resized (box average by a whole factor, then bilinear) -> RGB uint8 0..255; (x-127)/128 folded into the model"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


@dataclass(frozen=True)
class ModelSpec:
    """What a device must know to use an embedding model. Unknown keys are rejected."""

    fingerprint: str
    input_size: int
    embedding_dim: int
    quantization: str = "int8"
    input_dtype: str = "uint8"
    preprocessing: str = PREPROCESSING
    backbone: str = "efficientnet-lite0"
    training_data_fingerprint: str = ""
    created: str = ""
    parity: dict[str, float] = field(default_factory=dict)
    spec_version: int = SPEC_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{source}: unknown keys {unknown}")
        try:
            spec = cls(**data)
        except TypeError as exc:
            raise ModelError(f"{source}: incomplete model spec ({exc})") from exc
        if spec.spec_version != SPEC_VERSION:
            raise ModelError(f"{source}: spec version {spec.spec_version} is not supported")
        if not (8 <= int(spec.input_size) <= 1024) or not (2 <= int(spec.embedding_dim) <= 4096):
            raise ModelError(f"{source}: implausible input size or embedding dimension")
        return spec


def write_spec(model_path: str | Path, spec: ModelSpec) -> Path:
    path = sidecar_path(model_path)
    path.write_text(spec.to_json() + "\n")
    return path


def load_spec(model_path: str | Path, verify: bool = True) -> ModelSpec:
    """Read the sidecar of `model_path` and, by default, check the model's hash against it."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: no such model file")
    path = sidecar_path(model_path)
    if not path.is_file():
        raise ModelError(f"{model_path}: its spec sidecar {path.name} is missing; re-export with `shelfsight convert`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable model spec ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: model spec must be a JSON object")
    spec = ModelSpec.from_dict(data, source=str(path))
    if verify:
        actual = sha256_file(model_path)
        if actual != spec.fingerprint:
            raise ModelError(
                f"{model_path}: fingerprint mismatch (file {actual[:12]}…, spec {spec.fingerprint[:12]}…); "
                "the model was modified or the sidecar belongs to another model"
            )
    return spec
