"""HTML report of an evaluation: recall@K curve, per-product recall, worst confusions.

Plots need matplotlib (part of the `train` extra); the kiosk never imports this.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from shelfsight.edge_app.core.errors import InputError
from shelfsight.edge_app.core.images import fit_square, load_rgb
from shelfsight.edge_app.core.labels import scan_folder
from shelfsight.edge_app.evaluation.retrieval import EvalResult

THUMB = 128


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError("--report needs matplotlib (pip install 'shelfsight[train]')") from exc
    return plt


def _plots(result: EvalResult, out: Path) -> None:
    plt = _pyplot()
    ks = sorted(result.recall_at_k)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ks, [result.recall_at_k[k] for k in ks], marker="o")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=100)
    plt.close(fig)

    items = sorted(result.per_product_recall.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.16 * len(items))))
    ax.barh([name for name, _ in items], [v for _, v in items], color="#4a7")
    ax.set_xlabel("Recall@1")
    ax.set_xlim(0, 1)
    ax.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    fig.savefig(out / "per_product.png", dpi=100)
    plt.close(fig)


def _thumb(path: Path) -> np.ndarray:
    return fit_square(load_rgb(path), THUMB)


def _confusion_grid(result: EvalResult, catalog_dir: Path, out: Path) -> None:
    catalog = scan_folder(catalog_dir, "catalog")
    first_ref: dict[str, Path] = {}
    for path, product in zip(catalog.paths, catalog.products):
        first_ref.setdefault(product, path)
    blank = np.full((THUMB, THUMB, 3), 235, np.uint8)
    rows = []
    for c in result.confusions:
        cells = [_thumb(Path(c.query))]
        for product in (c.predicted, c.true_product):
            cells.append(_thumb(first_ref[product]) if product in first_ref else blank)
        rows.append(np.concatenate(cells, axis=1))
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out / "confusions.jpg", quality=88)


def write_report(
    result: EvalResult, catalog_dir: str | Path, out_dir: str | Path, title: str = "shelfsight eval"
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plots(result, out)
    _confusion_grid(result, Path(catalog_dir), out)
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{html.escape(Path(c.query).name)}</td><td>{html.escape(c.predicted)} ({c.score:.3f})</td>"
        f"<td>{html.escape(c.true_product)} ({'-' if c.true_score is None else f'{c.true_score:.3f}'})</td></tr>"
        for i, c in enumerate(result.confusions)
    )
    confusion_block = (
        '<p>Each row: query · wrongly matched product · the right product.</p><img src="confusions.jpg" alt="worst confusions">'
        if result.confusions
        else "<p>No confusions: every query's first product was right.</p>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td,th{{padding:2px 8px;text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Recall@1 <b>{result.recall_at_1:.4f}</b> · Recall@5 <b>{result.recall_at_5:.4f}</b> · MAP@R {result.map_at_r:.4f}
· {result.queries} queries · {result.products} products · query latency p50 {result.query_ms_p50:.1f} ms, p95 {result.query_ms_p95:.1f} ms</p>
<h2>Recall@K</h2><img src="recall_at_k.png" alt="recall at K">
<h2>Per-product Recall@1</h2><img src="per_product.png" alt="per-product recall">
<h2>Worst confusions</h2>{confusion_block}
<table><tr><th>#</th><th>query</th><th>predicted (score)</th><th>truth (score)</th></tr>{rows}</table>
</body></html>"""
    index = out / "index.html"
    index.write_text(page)
    return index
