"""Tables and figures from run records: Table 1, Fig. 2 (lambda sweep), Fig. 3 (embeddings).

Every function takes records (``kd2m.runs.run`` / ``load_record``) or features from the run
store and returns a pandas DataFrame or a matplotlib Figure; nothing here trains.
"""

from __future__ import annotations

import csv
import math
import statistics
from importlib import resources

import numpy as np

__all__ = ["paper_table1", "table1", "lambda_sweep_figure", "embedding_figure", "DATASET_COLUMNS"]

DATASET_COLUMNS = {"svhn": "SVHN", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def paper_table1():
    """The paper's Table 1 (test accuracy %, 15 epochs), as a DataFrame indexed by row
    (``baseline``, ``teacher``, ``E1``..``G3``) with columns SVHN, CIFAR-10, CIFAR-100, Avg."""
    import pandas as pd

    text = resources.files("kd2m").joinpath("resources/paper_table1.csv").read_text()
    rows = [r for r in csv.reader(line for line in text.splitlines() if not line.startswith("#"))]
    df = pd.DataFrame(rows[1:], columns=rows[0]).set_index("row")
    for c in ("SVHN", "CIFAR-10", "CIFAR-100", "Avg"):
        df[c] = df[c].astype(float)
    return df


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else float("nan")
    return m, s


def _fmt(m: float, s: float) -> str:
    return f"{m:.2f}" if math.isnan(s) else f"{m:.2f} ± {s:.2f}"


def table1(records: dict[str, dict[str, list[dict]]], *, with_paper: bool = True):
    """Table 1 from records: ``records[row][dataset] = [record, ...]`` (one per seed).

    ``row`` is ``teacher``, ``baseline`` (the student alone) or a Table 1 row id ``E1``..``G3``.
    Returns a DataFrame with, per dataset, our ``mean ± std`` test accuracy in % over the
    records given (std over seeds; a single seed shows the mean alone) and, when
    ``with_paper``, the paper's number beside it, plus the metric of each row and the
    number of seeds.
    """
    import pandas as pd

    from kd2m.metrics import TABLE1_METRICS

    paper = paper_table1()
    out = []
    for row, per_ds in records.items():
        line = {
            "row": row,
            "metric": TABLE1_METRICS.get(row, "-" if row != "baseline" else "none (lambda = 0)"),
        }
        for ds, recs in per_ds.items():
            col = DATASET_COLUMNS.get(ds, ds)
            accs = [100 * r["final"]["test_acc"] for r in recs]
            m, s = _mean_std(accs)
            line[f"{col} (ours)"] = _fmt(m, s)
            line[f"{col} seeds"] = len(accs)
            if with_paper and row in paper.index and col in paper.columns:
                line[f"{col} (paper)"] = f"{paper.loc[row, col]:.2f}"
        out.append(line)
    return pd.DataFrame(out).set_index("row")


def mean_accuracy(recs: list[dict]) -> float:
    """Mean final test accuracy (fraction) of records."""
    return statistics.fmean(r["final"]["test_acc"] for r in recs)


def lambda_sweep_figure(records: dict[float, dict], *, metric: str, dataset: str):
    """Fig. 2: per epoch, the train cross-entropy, the train distillation loss and the test
    accuracy, one curve per lambda (``records[lam] = record``)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    lams = sorted(records)
    for i, lam in enumerate(lams):
        h = records[lam]["history"]
        ep = [r["epoch"] for r in h]
        color = "black" if lam == 0 else cmap(i / max(1, len(lams) - 1))
        label = f"λ = {lam:g}" + (" (baseline)" if lam == 0 else "")
        axes[0].plot(ep, [r["train_ce"] for r in h], marker="o", ms=3, color=color, label=label)
        d = [r["train_distill"] for r in h]
        if all(v is not None for v in d):
            axes[1].plot(ep, d, marker="o", ms=3, color=color, label=label)
        axes[2].plot(
            ep, [100 * r["test_acc"] for r in h], marker="o", ms=3, color=color, label=label
        )
    axes[0].set(title="classification loss (train CE)", xlabel="epoch")
    axes[1].set(title=f"distillation loss D ({metric}, train)", xlabel="epoch", yscale="log")
    axes[2].set(title="test accuracy (%)", xlabel="epoch")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{DATASET_COLUMNS.get(dataset, dataset)}: lambda sweep")
    return fig


def embedding_figure(
    panels: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
):
    """Fig. 3: a 2-D UMAP embedding of teacher (red) and student (blue) test features.

    ``panels[title] = (teacher_features, student_features)`` (same images, same dimension).
    Each panel fits one seeded UMAP on the two sets stacked, so both live in one embedding.
    """
    import warnings

    import matplotlib.pyplot as plt
    from tqdm import TqdmWarning

    with warnings.catch_warnings():  # umap's dependencies import tqdm.auto (no ipywidgets)
        warnings.simplefilter("ignore", TqdmWarning)
        import umap

    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.8), constrained_layout=True, squeeze=False
    )
    for ax, (title, (zt, zs)) in zip(axes[0], panels.items(), strict=True):
        zt = np.asarray(zt, dtype=np.float32)
        zs = np.asarray(zs, dtype=np.float32)
        emb = umap.UMAP(
            n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1
        ).fit_transform(np.concatenate([zt, zs]))
        n = len(zt)
        ax.scatter(emb[:n, 0], emb[:n, 1], s=3, c="tab:red", alpha=0.5, label="teacher")
        ax.scatter(emb[n:, 0], emb[n:, 1], s=3, c="tab:blue", alpha=0.5, label="student")
        ax.set(title=title, xticks=[], yticks=[])
        ax.legend(markerscale=4, loc="best", fontsize=8)
    return fig
