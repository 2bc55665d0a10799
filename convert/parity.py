"""The parity gate: a converted model must reproduce the float model it came from.

Two checks on a validation catalog + query folder: the mean cosine between
float and converted embeddings of the same images, and the Recall@1 change.
The gate runs before the model is moved into place, so a failed conversion
never replaces a good model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.errors import ParityError
from shelfsight.edge_app.core.labels import scan_folder
from shelfsight.edge_app.evaluation.retrieval import embed_paths, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityReport:
    mean_cosine: float
    min_cosine: float
    float_recall_at_1: float
    converted_recall_at_1: float
    recall_at_1_drop_points: float
    images: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def measure(reference: Embedder, converted: Embedder, catalog_dir: str | Path, queries_dir: str | Path) -> ParityReport:
    paths = scan_folder(queries_dir, "parity queries").paths
    a = embed_paths(reference, paths)
    b = embed_paths(converted, paths)
    cosine = np.sum(a * b, axis=1)
    float_r1 = evaluate(reference, catalog_dir, queries_dir).recall_at_1
    conv_r1 = evaluate(converted, catalog_dir, queries_dir).recall_at_1
    return ParityReport(
        mean_cosine=float(cosine.mean()),
        min_cosine=float(cosine.min()),
        float_recall_at_1=float_r1,
        converted_recall_at_1=conv_r1,
        recall_at_1_drop_points=100.0 * (float_r1 - conv_r1),
        images=len(paths),
    )


def check(report: ParityReport, min_cosine: float = 0.98, max_drop_points: float = 1.0) -> None:
    problems = []
    if report.mean_cosine < min_cosine:
        problems.append(f"mean cosine to the float model {report.mean_cosine:.4f} < {min_cosine}")
    if report.recall_at_1_drop_points > max_drop_points:
        problems.append(
            f"Recall@1 fell {report.recall_at_1_drop_points:.2f} points "
            f"({report.float_recall_at_1:.4f} -> {report.converted_recall_at_1:.4f}) > {max_drop_points}"
        )
    if problems:
        raise ParityError("converted model failed the parity gate: " + "; ".join(problems))
