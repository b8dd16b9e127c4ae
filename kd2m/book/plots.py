"""Tables and figures from run records: Table 1, Fig. 2 (lambda sweep), Fig. 3 (embeddings),
the setup of each profile.

Every function takes records (``kd2m.runs.run`` / ``load_record``) or features from the run
store and returns a pandas DataFrame or Styler, or a matplotlib Figure drawn for the book's
column (:mod:`kd2m.book.style`); nothing here trains.
"""

from __future__ import annotations

import csv
import math
import statistics
from importlib import resources

import numpy as np

from kd2m.book import style

__all__ = [
    "DATASET_COLUMNS",
    "calibration_table",
    "paired_rows",
    "paired_table",
    "table1_glue",
    "table1_numbers",
    "teacher_line",
    "embedding_figure",
    "gaps_frame",
    "gaps_glue",
    "lambda_sweep_figure",
    "mean_accuracy",
    "paper_table1",
    "profile_table",
    "runs_table",
    "sweep_glue",
    "sweep_table",
    "table1",
    "table1_frame",
]

DATASET_COLUMNS = {"svhn": "SVHN", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
ROW_ORDER = ("teacher", "baseline", "KD", "E1", "E2", "E3", "G1", "G2", "G3")
"""Table 1's rows in the book's order: the teacher, the student alone, the Hinton control
(logit distillation), then the KD2M rows."""
NOT_RUN = "not run"


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


def _metric_label(row: str) -> str:
    from kd2m.metrics import TABLE1_METRICS

    if row == "teacher":
        return "—"
    if row == "baseline":
        return "none (λ = 0)"
    if row == "KD":
        return "hinton (control)"
    return TABLE1_METRICS.get(row, "—")


def _ordered(rows) -> list[str]:
    rows = [r for r in rows if r != "checks"]  # table1_runs' teacher-margin lines
    known = [r for r in ROW_ORDER if r in rows]
    return known + [r for r in rows if r not in ROW_ORDER]


def table1_frame(records: dict[str, dict[str, list[dict]]], *, with_paper: bool = True):
    """Table 1 from records as a DataFrame: ``records[row][dataset] = [record, ...]``.

    ``row`` is ``teacher``, ``baseline`` (the student alone) or a Table 1 row id ``E1``..``G3``.
    Indexed by row, teacher first, then the baseline and the KD2M rows. Per dataset of the
    paper (SVHN, CIFAR-10, CIFAR-100) and ``Avg``: ``<col> (ours)``, our ``mean ± std``
    test accuracy in % over the records given (std over seeds; one seed shows the mean
    alone; ``"not run"`` for a dataset without records; ``Avg`` is the mean of our three
    dataset means, ``"—"`` unless all three were run) and, with ``with_paper``,
    ``<col> (paper)``; ``<col> seeds`` counts the records. With ``with_paper`` every row of
    the paper's table appears, run or not. Column ``metric``: the metric of each row.
    """
    import pandas as pd

    paper = paper_table1()
    rows = _ordered(set(records) | (set(paper.index) if with_paper else set()))
    out = []
    for row in rows:
        per_ds = records.get(row, {})
        line: dict = {"row": row, "metric": _metric_label(row)}
        means = []
        for ds, col in DATASET_COLUMNS.items():
            recs = per_ds.get(ds, [])
            if recs:
                m, s = _mean_std([100 * r["final"]["test_acc"] for r in recs])
                means.append(m)
                line[f"{col} (ours)"] = _fmt(m, s)
            else:
                line[f"{col} (ours)"] = NOT_RUN
            line[f"{col} seeds"] = len(recs)
            if with_paper:
                line[f"{col} (paper)"] = f"{paper.loc[row, col]:.2f}" if row in paper.index else "—"
        line["Avg (ours)"] = f"{statistics.fmean(means):.2f}" if len(means) == 3 else "—"
        if with_paper:
            line["Avg (paper)"] = f"{paper.loc[row, 'Avg']:.2f}" if row in paper.index else "—"
        # datasets outside the paper's three (none today) keep their own columns
        for ds, recs in per_ds.items():
            if ds not in DATASET_COLUMNS and recs:
                line[f"{ds} (ours)"] = _fmt(
                    *_mean_std([100 * r["final"]["test_acc"] for r in recs])
                )
                line[f"{ds} seeds"] = len(recs)
        out.append(line)
    return pd.DataFrame(out).set_index("row")


def _student_epochs(records: dict[str, dict[str, list[dict]]]) -> set[int]:
    return {
        int(r["config"]["epochs"])
        for row, per in records.items()
        if row not in ("teacher", "checks")
        for recs in per.values()
        for r in recs
    }


def table1(
    records: dict[str, dict[str, list[dict]]],
    *,
    with_paper: bool = True,
    caption: str | None = None,
):
    """Table 1 for the reader: a pandas Styler with, per row (teacher, baseline, E1..G3), a
    line ``paper`` (the paper's full Table 1: SVHN, CIFAR-10, CIFAR-100, Avg) and a line
    ``ours`` beneath it (mean ± std over seeds; ``not run`` for a dataset we did not run).
    Seven columns: row, metric, source, the three datasets and Avg. The number of seeds
    and the epochs are said once in the caption (``caption`` is put before them).
    The numbers themselves: :func:`table1_frame`."""
    import pandas as pd

    df = table1_frame(records, with_paper=with_paper)
    cols = [*DATASET_COLUMNS.values(), "Avg"]
    lines = []
    for row, r in df.iterrows():
        sources = ("paper", "ours") if with_paper else ("ours",)
        for i, src in enumerate(sources):
            line = {
                "row": row if i == 0 else "",
                "metric": r["metric"] if i == 0 else "",
                "source": src,
            }
            for c in cols:
                line[f"{c} (%)" if c != "Avg" else "Avg (%)"] = r[f"{c} ({src})"]
            lines.append(line)
    seeds = {int(n) for c in DATASET_COLUMNS.values() for n in df[f"{c} seeds"] if n > 0}
    epochs = _student_epochs(records)
    parts = [caption] if caption else []
    parts.append("Test accuracy (%).")
    if with_paper:
        parts.append("paper: Montesuma (2025), Table 1, 15 epochs.")
    ours = "ours: "
    if epochs:
        ours += f"{'/'.join(str(e) for e in sorted(epochs))} student epochs, "
    if seeds == {1}:
        ours += "one seed."
    elif len(seeds) == 1:
        ours += f"mean ± std over {seeds.pop()} seeds."
    else:
        ours += "mean ± std over the seeds run (one seed: the mean alone)."
    parts.append(ours)
    parts.append("not run: no run of ours on that dataset; Avg of ours needs all three.")
    frame = pd.DataFrame(lines)
    return style.styled(frame, caption=" ".join(parts), drop_constant=False).set_table_styles(
        [{"selector": "td", "props": "white-space: nowrap;"}], overwrite=False
    )


def runs_table(records: dict[str, dict[str, list[dict]]], *, caption: str | None = None):
    """One line per run (teacher first): row, dataset, seed, test accuracy (%), the exact
    ``W_2^2`` between its test features and the teacher's at the last epoch (when logged),
    and the wall time (s). Constant columns go to the caption."""
    import pandas as pd

    lines = []
    for row in _ordered(records):
        for ds, recs in records[row].items():
            for r in recs:
                last = r["history"][-1] if r.get("history") else {}
                lines.append(
                    {
                        "row": row,
                        "dataset": DATASET_COLUMNS.get(ds, ds),
                        "seed": int(r["config"]["seed"]),
                        "test acc (%)": 100 * r["final"]["test_acc"],
                        "feature W2² to teacher": last.get("test_feature_w2", float("nan")),
                        "time (s)": float(r["wall_seconds"]),
                    }
                )
    frame = pd.DataFrame(lines)
    if frame["feature W2² to teacher"].isna().all():
        frame = frame.drop(columns="feature W2² to teacher")
    return style.styled(
        frame,
        caption=caption,
        formats={
            "test acc (%)": "{:.2f}",
            "feature W2² to teacher": "{:.1f}",
            "time (s)": "{:.0f}",
        },
        constant_formats={"seed": "{:d}"},
    )


def mean_accuracy(recs: list[dict]) -> float:
    """Mean final test accuracy (fraction) of records."""
    return statistics.fmean(r["final"]["test_acc"] for r in recs)


def _images(n, full: str) -> str:
    return full if n is None else f"{int(n):,}"


def _arch(p: dict) -> str:
    a = p["arch"].replace("resnet", "ResNet-" if p.get("stem") == "cifar" else "ResNet")
    width = f", width {p['width']}" if p.get("width") else ""
    return f"{a} ({p.get('stem', '')} stem{width})"


def profile_table(profiles: tuple[str, ...] = ("cpu", "paper")):
    """The setup of each profile (:data:`kd2m.profiles.PROFILES`) as a Styler: one line per
    setting (architectures, epochs, images, optimiser, lambda, seed), one column per profile."""
    import pandas as pd

    from kd2m.profiles import PROFILES

    cols = {}
    for name in profiles:
        p = PROFILES[name]
        t = {k: p["teacher"].get(k, p[k]) for k in ("epochs", "n_train", "lr", "weight_decay")}
        cols[name] = {
            "teacher": _arch(p["teacher"]),
            "student": _arch(p["student"]),
            "epochs (teacher / student)": f"{t['epochs']} / {p['epochs']}",
            "training images (teacher / student)": (
                f"{_images(t['n_train'], 'all')} / {_images(p['n_train'], 'all')}"
            ),
            "test images": _images(p["n_test"], "all"),
            "batch size": str(p["batch_size"]),
            "SGD lr (teacher / student), cosine to": f"{t['lr']:g} / {p['lr']:g}, {p['lr_min']:g}",
            "momentum, weight decay (teacher / student)": (
                f"{p['momentum']:g}, {t['weight_decay']:g} / {p['weight_decay']:g}"
            ),
            "λ of KD2M (of the Hinton control)": f"{p['lam']:g} ({p['lams']['hinton']:g})",
            "teacher must beat the baseline by": f"{p['teacher_margin']:g} points",
            "seed of the teacher": str(p["seed"]),
            "ImageNet weights": "yes" if p["pretrained"] else "no",
        }
    frame = pd.DataFrame(cols)
    frame.index.name = "setting"
    frame = frame.reset_index()
    return style.styled(
        frame,
        caption="Setup of each profile (kd2m.profiles); 'all': the full training or test set.",
        drop_constant=False,
    ).set_table_styles([{"selector": "td", "props": "text-align: left;"}], overwrite=False)


def sweep_table(records: dict[float, dict], *, metric: str):
    """Fig. 2's runs at their last epoch, one line per lambda: train CE, the train distance
    ``D`` (the metric trained with), the exact ``W_2^2`` between student and teacher test
    features, and the test accuracy (%)."""
    import pandas as pd

    lines = []
    for lam in sorted(records):
        r = records[lam]
        last = r["history"][-1]
        lines.append(
            {
                "λ": lam,
                "train CE": last["train_ce"],
                f"train D ({metric})": last["train_distill"],
                "test feature W2²": last.get("test_feature_w2", float("nan")),
                "test acc (%)": 100 * r["final"]["test_acc"],
            }
        )
    return style.styled(
        pd.DataFrame(lines),
        formats={"λ": "{:g}", "train CE": "{:.3f}", "test acc (%)": "{:.2f}"},
    )


def _lambda_colors(lams: list[float]) -> dict[float, str]:
    palette = [c for c in style.OKABE_ITO if c != "#000000"]
    out, k = {}, 0
    for lam in lams:
        if lam == 0:
            out[lam] = "#000000"
        else:
            out[lam] = palette[k % len(palette)]
            k += 1
    return out


def lambda_sweep_figure(records: dict[float, dict], *, metric: str, dataset: str):
    """Fig. 2: per epoch, the train cross-entropy, the train distillation loss and the
    accuracy on the 1,000 monitored test images (the whole test set is evaluated once, at
    the end), one curve per lambda (``records[lam] = record``); one legend under the panels.

    Three panels in a row at the column's width, integer epoch ticks, lambda = 0 (the
    baseline) in black and the other lambdas in Okabe-Ito colours."""
    lams = sorted(records)
    colors = _lambda_colors(lams)
    markers = "osD^v<>p"
    with style.figure_style():
        fig, axes = style.new_figure(1, 3, height=2.9)
        for i, lam in enumerate(lams):
            h = records[lam]["history"]
            ep = [r["epoch"] for r in h]
            kw = {"marker": markers[i % len(markers)], "color": colors[lam]}
            label = f"λ = {lam:g}" + (" (baseline)" if lam == 0 else "")
            axes[0].plot(ep, [r["train_ce"] for r in h], label=label, **kw)
            d = [r["train_distill"] for r in h]
            if all(v is not None for v in d):
                axes[1].plot(ep, d, label=label, **kw)
            axes[2].plot(ep, [100 * r["monitor_acc"] for r in h], label=label, **kw)
        axes[0].set(title="train CE", xlabel="epoch")
        axes[1].set(title=f"train D ({metric})", xlabel="epoch", yscale="log")
        axes[2].set(title="accuracy, 1,000 test images (%)", xlabel="epoch")
        for ax in axes:
            style.integer_epochs(ax)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
        fig.suptitle(f"{DATASET_COLUMNS.get(dataset, dataset)}: λ sweep")
        return style.finish(fig, close=True)


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
    At most three panels per row (more are stacked), square panels at the column's width,
    one legend above them.
    """
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():  # umap's dependencies import tqdm.auto (no ipywidgets)
        warnings.simplefilter("ignore", TqdmWarning)
        import umap

    n_panels = len(panels)
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    side = style.COLUMN_WIDTH / max(2, ncols)
    with style.figure_style():
        fig, axes = style.new_figure(nrows, ncols, height=side * nrows + 0.4, squeeze=False)
        flat = axes.ravel()
        for ax, (title, (zt, zs)) in zip(flat, panels.items(), strict=False):
            zt = np.asarray(zt, dtype=np.float32)
            zs = np.asarray(zs, dtype=np.float32)
            emb = umap.UMAP(
                n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1
            ).fit_transform(np.concatenate([zt, zs]))
            n = len(zt)
            ax.scatter(
                emb[:n, 0],
                emb[:n, 1],
                s=2,
                c=style.TEACHER_RED,
                alpha=0.5,
                label="teacher",
                linewidths=0,
            )
            ax.scatter(
                emb[n:, 0],
                emb[n:, 1],
                s=2,
                c=style.STUDENT_BLUE,
                alpha=0.5,
                label="student",
                linewidths=0,
            )
            ax.set(title=title, xticks=[], yticks=[])
            ax.grid(False)
            ax.spines[["top", "right"]].set_visible(True)
        for ax in flat[n_panels:]:
            ax.set_visible(False)
        handles, labels = flat[0].get_legend_handles_labels()
        legend = fig.legend(handles, labels, loc="outside upper center", ncols=2, markerscale=4)
        for handle in legend.legend_handles:
            if handle is not None:
                handle.set_alpha(1.0)
        return style.finish(fig, close=True)


# --------------------------------------------------------------------------- Table 1 statistics


def _lam_of(recs: list[dict]) -> str:
    lams = sorted({float(r["config"]["lam"]) for r in recs})
    return "/".join(f"{lam:g}" for lam in lams)


def paired_rows(records: dict[str, dict[str, list[dict]]], dataset: str) -> list[dict]:
    """Every student row of ``records`` (baseline first) compared with the baseline on
    ``dataset``, paired by seed (:func:`kd2m.stats.compare_rows`) on the seeds the row
    shares with the baseline (``n_seeds``), each with its ``metric`` and ``lam``."""
    from kd2m.stats import compare_rows

    rows = [r for r in _ordered(records) if r != "teacher"]
    per = {r: records[r][dataset] for r in rows if records[r].get(dataset)}
    base = per["baseline"]
    out = compare_rows({"baseline": base})
    for row, recs in per.items():
        if row != "baseline":
            seeds = {r["config"]["seed"] for r in recs}
            shared = [r for r in base if r["config"]["seed"] in seeds]
            out.append(compare_rows({"baseline": shared, row: recs})[1])
    for line in out:
        line["metric"] = _metric_label(line["row"])
        line["lam"] = _lam_of(per[line["row"]])
    return out


def _p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def paired_table(records: dict[str, dict[str, list[dict]]], dataset: str):
    """Table 1 as a paired comparison (a Styler): per row its lambda, the test accuracy
    (mean ± std over seeds, %), the mean paired difference to the baseline on the same
    seeds with its 95 % t interval (marked * where it excludes zero), and the test images
    that only the baseline / only the row classified correctly (summed over seeds) with
    the exact McNemar p-value."""
    import pandas as pd

    rows = paired_rows(records, dataset)
    lines = []
    for c in rows:
        line = {"row": c["row"], "λ": c["lam"], "accuracy (%)": _fmt(c["mean"], c["sd"])}
        if c["row"] != "baseline":
            star = " *" if c["significant"] else ""
            line |= {
                "difference [95 % interval]": (
                    f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]{star}"
                ),
                "images b / r": f"{c['base_only']} / {c['other_only']}",
                "p (images)": _p(c["p_images"]),
            }
        lines.append(line)
    ns = sorted({c["n_seeds"] for c in rows})
    n = "/".join(str(k) for k in ns)
    caption = (
        f"{DATASET_COLUMNS.get(dataset, dataset)}: test accuracy over {n} seeds, each student "
        "evaluated on the whole test set. Difference: row minus baseline on the same seed "
        "(same initialisation, same batches), mean with its 95 % t interval over seeds "
        "(* the interval excludes 0). Images b / r: test images classified correctly only by "
        "the baseline / only by the row, summed over seeds, and the exact McNemar test on "
        "them (pooled over seeds, so it treats the seeds' images as independent)."
    )
    return style.styled(
        pd.DataFrame(lines).fillna(""), caption=caption, drop_constant=False
    ).set_table_styles([{"selector": "td", "props": "white-space: nowrap;"}], overwrite=False)


def table1_numbers(records: dict[str, dict[str, list[dict]]], dataset: str) -> str:
    """The numbers of :func:`paired_table` as plain text with fixed decimals, one line per
    row: what the nbval regression test compares."""
    out = []
    for c in paired_rows(records, dataset):
        line = f"{c['row']:8s} lam={c['lam']:8s} n={c['n_seeds']} acc={c['mean']:.2f}±{c['sd']:.2f}"
        if c["row"] != "baseline":
            line += (
                f" diff={c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"
                f" images={c['base_only']}/{c['other_only']}"
            )
        out.append(line)
    return "\n".join(out)


def calibration_table(records: dict[str, dict[float, dict]], chosen: dict[str, float]):
    """The choice of lambda (a Styler): per row, the validation accuracy (%) at each lambda
    of the grid, the student alone for reference, and the lambda chosen."""
    import pandas as pd

    base = records["baseline"][0.0]
    lines = []
    for row, per in records.items():
        if row == "baseline":
            continue
        line: dict = {"row": row, "metric": _metric_label(row)}
        for lam in sorted(per):
            line[f"λ = {lam:g}"] = 100 * per[lam]["final"]["test_acc"]
        line["chosen λ"] = f"{chosen[row]:g}"
        lines.append(line)
    n_val = base["final"]["test_n"]
    caption = (
        f"Validation accuracy (%) on {n_val:,} training images that the students do not "
        f"train on (seed {base['config']['seed']}); the student alone reaches "
        f"{100 * base['final']['test_acc']:.2f} %. The test set is not used."
    )
    frame = pd.DataFrame(lines)
    lam_cols = [c for c in frame.columns if c.startswith("λ =")]
    return style.styled(
        frame, caption=caption, formats=dict.fromkeys(lam_cols, "{:.2f}"), drop_constant=False
    )


def teacher_line(teacher: dict) -> str:
    """How the teacher of ``teacher`` (a record) was made and how good it is, in one line."""
    c, d = teacher["config"], teacher["data"]
    hw = teacher.get("hardware", {})
    where = hw.get("gpu") or hw.get("device", "?")
    return (
        f"teacher {teacher['name']}: {c['arch']} trained {c['epochs']} epochs on "
        f"{d['n_train']:,} training images (SGD lr {c['lr']:g}, weight decay "
        f"{c['weight_decay']:g}) on {where}; test accuracy "
        f"{100 * teacher['final']['test_acc']:.2f} % on {d['n_test']:,} test images"
    )


def table1_glue(
    records: dict[str, dict[str, list[dict]]], dataset: str, prefix: str = "t1"
) -> dict[str, str]:
    """The numbers that Table 1's prose quotes, formatted, by name (``t1_<row>_<what>``,
    ``t1`` being ``prefix``:
    acc, sd, diff, low, high, half, p_images, lam, term (lambda times the distance in the
    loss at the last epoch) and ce (the train cross-entropy then); ``t1_teacher``, ``t1_lead`` (the
    teacher's lead over the mean baseline), ``t1_seeds``, ``t1_gains`` / ``t1_losses`` (how
    many KD2M rows have an interval above / below zero) and ``t1_max_half`` (the widest
    half-width of a KD2M row)), for :func:`kd2m.book.style.glue_all`."""
    rows = paired_rows(records, dataset)
    teacher = 100 * records["teacher"][dataset][0]["final"]["test_acc"]
    out = {"teacher": f"{teacher:.2f}", "seeds": str(rows[0]["n_seeds"])}
    out["lead"] = f"{teacher - rows[0]['mean']:.1f}"
    for c in rows:
        key = c["row"]
        out |= {f"{key}_acc": f"{c['mean']:.2f}", f"{key}_sd": f"{c['sd']:.2f}"}
        out[f"{key}_lam"] = c["lam"]
        if c["row"] != "baseline":
            out |= {
                f"{key}_diff": f"{c['diff']:+.2f}",
                f"{key}_low": f"{c['low']:+.2f}",
                f"{key}_high": f"{c['high']:+.2f}",
                f"{key}_half": f"{c['half_width']:.2f}",
                f"{key}_p_images": _p(c["p_images"]),
            }
            recs = records[c["row"]][dataset]
            terms = [
                r["config"]["lam"] * r["history"][-1]["train_distill"]
                for r in recs
                if r["history"] and r["history"][-1].get("train_distill") is not None
            ]
            if terms:  # lambda * D in the loss at the last epoch, mean over seeds
                out[f"{key}_term"] = f"{statistics.fmean(terms):.2g}"
                ce = statistics.fmean(r["history"][-1]["train_ce"] for r in recs)
                out[f"{key}_ce"] = f"{ce:.2f}"
    kd2m = [c for c in rows if c["row"] not in ("baseline", "KD")]
    out["gains"] = str(sum(c["significant"] and c["diff"] > 0 for c in kd2m))
    out["losses"] = str(sum(c["significant"] and c["diff"] < 0 for c in kd2m))
    out["max_half"] = f"{max((c['half_width'] for c in kd2m), default=float('nan')):.2f}"
    return {f"{prefix}_{k}": v for k, v in out.items()}


def sweep_glue(records: dict[float, dict], prefix: str = "f2") -> dict[str, str]:
    """The numbers that Fig. 2's prose quotes, by name ``f2_<what>_<lambda>`` with lambda
    written as in ``0p01``: ``D`` (train distance at the last epoch), ``w2`` (exact W2² to
    the teacher on the monitored test images), ``ce`` (train cross-entropy), ``acc`` (test
    accuracy %), for :func:`kd2m.book.style.glue_all`."""
    out = {}
    for lam, r in records.items():
        k = f"{lam:g}".replace(".", "p").replace("-", "m")
        last = r["history"][-1]
        out[f"{prefix}_D_{k}"] = f"{last['train_distill']:.3g}"
        out[f"{prefix}_w2_{k}"] = f"{last.get('test_feature_w2', float('nan')):.3g}"
        out[f"{prefix}_ce_{k}"] = f"{last['train_ce']:.2f}"
        out[f"{prefix}_acc_{k}"] = f"{100 * r['final']['test_acc']:.2f}"
    return out


def gaps_frame(panels: dict[str, tuple[np.ndarray, np.ndarray]], records: dict[str, dict]):
    """Fig. 3's exact distances per panel (a DataFrame indexed by panel): the empirical
    ``W2`` (not squared) between the teacher's and the student's features, the mean
    distance between the two features of the same image, and the test accuracy (%)."""
    import pandas as pd

    from kd2m import theory

    return pd.DataFrame(
        [
            {
                "panel": t,
                "W2": theory.empirical_wasserstein(zs, zt, p=2),
                "mean ||z_S - z_T||": theory.coupling_gap(zs, zt),
                "test acc %": 100 * records[t]["final"]["test_acc"],
            }
            for t, (zt, zs) in panels.items()
        ]
    ).set_index("panel")


def gaps_glue(gaps, prefix: str = "f3") -> dict[str, str]:
    """Fig. 3's prose numbers from :func:`gaps_frame` (first panel: the baseline, second:
    the KD2M student): ``f3_w2_base``, ``f3_w2_kd``, ``f3_gap_base``, ``f3_gap_kd``,
    ``f3_acc_base``, ``f3_acc_kd``."""
    base, kd = gaps.index[:2]
    out = {}
    for who, panel in (("base", base), ("kd", kd)):
        out[f"{prefix}_w2_{who}"] = f"{gaps.loc[panel, 'W2']:.2f}"
        out[f"{prefix}_gap_{who}"] = f"{gaps.loc[panel, 'mean ||z_S - z_T||']:.2f}"
        out[f"{prefix}_acc_{who}"] = f"{gaps.loc[panel, 'test acc %']:.2f}"
    return out
