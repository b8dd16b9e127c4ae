"""The book's experiments as calls: which runs each chapter needs, trained or loaded.

Every function builds configs from a profile (``kd2m.profiles``) and asks the run store
(``kd2m.runs.run``) for them, so a run that one chapter trained is loaded by the next.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kd2m.data import DATASETS, DEFAULT_IMAGE_SIZE, resolve_source
from kd2m.metrics import TABLE1_METRICS
from kd2m.profiles import (
    check_teacher,
    folder_fields,
    student_config,
    teacher_config,
    teacher_overrides,
)
from kd2m.runs import RunConfig, load_monitor, load_records, run

__all__ = [
    "data_args",
    "data_sources",
    "other_data",
    "student_configs",
    "table1_configs",
    "table1_runs",
    "calibration_configs",
    "calibrate",
    "calibrate_all",
    "sweep_configs",
    "sweep_runs",
    "embedding_panels",
    "run_finished",
    "results_records",
    "results_table",
]


def data_args(dataset: str, folders: dict | None, download: bool | str = "auto") -> dict:
    """``source`` / ``folder`` / ``download`` for ``dataset`` and a one-sentence
    ``description`` of the data used (:func:`kd2m.data.resolve_source`): the image folder
    (or archive) named in ``folders`` when it exists, else torchvision's official files in
    ``data/``, downloaded there first when ``download`` is "auto" or True. Without either,
    one :class:`kd2m.data.DataNotFoundError` names both ways out."""
    src = resolve_source(dataset, (folders or {}).get(dataset), download)
    return src.args() | {"description": src.description}


def data_sources(datasets: list[str], folders: dict | None, download: bool | str = "auto") -> str:
    """One line per dataset: which data the chapter uses (see :func:`data_args`)."""
    return "\n".join(data_args(ds, folders, download)["description"] for ds in datasets)


def _data_label(rec: dict) -> str:
    d = rec.get("data", {})
    where = d.get("archive") or d.get("path") or "?"
    return f"{d.get('source', '?')} {where} (content sha256 {str(d.get('content_sha256'))[:12]})"


def other_data(record: dict, reference: dict) -> str | None:
    """None when ``record`` was trained on exactly the images ``reference`` was (the same
    ``content_sha256`` of the data it saw, subset included); otherwise one sentence saying
    that the reference numbers belong to another copy of the data, naming both."""
    a = record.get("data", {}).get("content_sha256")
    b = reference.get("data", {}).get("content_sha256")
    if a is not None and a == b:
        return None
    return (
        f"the reference numbers were made from other data ({_data_label(reference)}) "
        f"than this run's ({_data_label(record)}): they are not expected to match"
    )


def _folder_of(dataset: str, args: dict) -> dict:
    """``folder=`` for the config builders when ``dataset`` is an image folder of one's own
    (its configs carry the content hash of its images)."""
    return {"folder": args["folder"]} if dataset not in DATASETS else {}


def _with_data_hash(dataset: str, folder, overrides: dict | None) -> dict:
    """``overrides`` plus the ``data_sha256`` of an image folder of one's own (read once
    for all the configs of a chapter); unchanged for the known datasets."""
    overrides = dict(overrides or {})
    if folder is not None and dataset not in DATASETS and "data_sha256" not in overrides:
        fields = folder_fields(dataset, folder, overrides.get("image_size", DEFAULT_IMAGE_SIZE))
        overrides["data_sha256"] = fields["data_sha256"]
    return overrides


def student_configs(
    profile: str,
    dataset: str,
    metrics: list[str],
    *,
    seed: int,
    source: str,
    overrides: dict | None = None,
    lam: float | None = None,
    teacher: RunConfig | None = None,
    folder=None,
) -> dict[str, RunConfig]:
    """``{"baseline": cfg, metric: cfg, ...}``: the student baseline (``lambda = 0``) and one
    KD2M student per metric (``lam``: the profile's by default), as
    :func:`kd2m.profiles.student_config` builds them, so every chapter asks the run store for
    the same configs. The one place where the book builds students. ``folder``: the image
    folder of a dataset of one's own (read once for the content hash of its configs)."""
    ov = _with_data_hash(dataset, folder, overrides)
    out = {
        "baseline": student_config(
            profile, dataset, None, seed=seed, source=source, teacher=teacher, **ov
        )
    }
    for m in metrics:
        out[m] = student_config(
            profile, dataset, m, lam=lam, seed=seed, source=source, teacher=teacher, **ov
        )
    return out


def table1_configs(
    profile: str,
    dataset: str,
    rows: list[str],
    seeds: list[int],
    *,
    source: str,
    overrides: dict | None = None,
    folder=None,
    lams: dict[str, float] | None = None,
) -> dict[str, list[RunConfig]]:
    """``{"teacher": [...], "baseline": [...], "KD": [...], "E1": [...], ...}``: one config
    per seed (the teacher is trained once, with the profile's seed, and shared by every
    student). ``lams``: lambda per row (e.g. chosen on the validation split), else the
    profile's (:func:`kd2m.profiles.student_config`)."""
    unknown = [r for r in rows if r not in TABLE1_METRICS]
    if unknown:
        raise ValueError(f"rows={unknown}: expected Table 1 rows among {sorted(TABLE1_METRICS)}")
    overrides = _with_data_hash(dataset, folder, overrides)
    teacher = teacher_config(profile, dataset, source=source, **teacher_overrides(overrides))
    out: dict[str, list[RunConfig]] = {"teacher": [teacher]}
    for row in ["baseline", *rows]:
        metric = None if row == "baseline" else TABLE1_METRICS[row]
        lam = (lams or {}).get(row) if metric is not None else None
        out[row] = [
            student_config(
                profile,
                dataset,
                metric,
                lam=lam,
                seed=s,
                source=source,
                teacher=teacher,
                **overrides,
            )
            for s in seeds
        ]
    return out


def _run_all(configs, args: dict, device, progress) -> list[dict]:
    return [
        run(c, folder=args["folder"], download=args["download"], device=device, progress=progress)
        for c in configs
    ]


def table1_runs(
    profile: str,
    datasets: list[str],
    rows: list[str],
    seeds: list[int],
    *,
    folders: dict | None = None,
    download: bool | str = "auto",
    device: str = "auto",
    overrides: dict | None = None,
    progress: bool | None = None,
    lams: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, list[dict]]]:
    """Records for Table 1: ``records[row][dataset] = [record per seed]``, trained or loaded.
    ``lams[dataset][row]``: the lambda of a row (:func:`calibrate_all`), else the profile's.

    Seed by seed: the baseline first, then (once the teacher is checked to beat it by the
    profile's margin, :func:`kd2m.profiles.check_teacher`) every row, so that the rows of
    a seed share the teacher's outputs on their common batches. The check is strict
    unless ``overrides`` change the teacher (a dry run); its lines are in
    ``records["checks"]``."""
    records: dict[str, dict[str, list[dict]]] = {"checks": {}}
    for ds in datasets:
        args = data_args(ds, folders, download)
        cfgs = table1_configs(
            profile,
            ds,
            rows,
            seeds,
            source=args["source"],
            overrides=overrides,
            lams=(lams or {}).get(ds),
            **_folder_of(ds, args),
        )
        strict = not teacher_overrides(overrides)
        (teacher,) = _run_all(cfgs["teacher"], args, device, progress)
        records.setdefault("teacher", {})[ds] = [teacher]
        checks = records["checks"].setdefault(ds, [])
        for i in range(len(seeds)):
            (base,) = _run_all([cfgs["baseline"][i]], args, device, progress)
            checks.append(check_teacher(profile, teacher, base, strict=strict))
            records.setdefault("baseline", {}).setdefault(ds, []).append(base)
            for row in rows:
                (rec,) = _run_all([cfgs[row][i]], args, device, progress)
                records.setdefault(row, {}).setdefault(ds, []).append(rec)
    return records


def calibration_configs(
    profile: str,
    dataset: str,
    rows: list[str],
    grid: list[float],
    seed: int,
    n_val: int,
    *,
    source: str,
    overrides: dict | None = None,
    folder=None,
) -> dict[str, dict[float, RunConfig]]:
    """``{"baseline": {0.0: cfg}, row: {lam: cfg, ...}}``: students evaluated on ``n_val``
    training images left out of their training subset (``RunConfig.n_val``), never on the
    test set, one per row and lambda of ``grid``."""
    ov = dict(overrides or {}) | {"n_val": n_val}
    kw = {"source": source, "folder": folder, "overrides": ov}
    base = table1_configs(profile, dataset, [], [seed], **kw)["baseline"][0]
    out: dict[str, dict[float, RunConfig]] = {"baseline": {0.0: base}}
    for lam in grid:
        cfgs = table1_configs(profile, dataset, rows, [seed], lams=dict.fromkeys(rows, lam), **kw)
        for row in rows:
            out.setdefault(row, {})[float(lam)] = cfgs[row][0]
    return out


def calibrate(
    profile: str,
    dataset: str,
    rows: list[str],
    grid: list[float],
    seed: int,
    n_val: int,
    *,
    folders: dict | None = None,
    download: bool | str = "auto",
    device: str = "auto",
    overrides: dict | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, float], dict[str, dict[float, dict]]]:
    """Lambda per row chosen on the validation split: the lambda of ``grid`` with the best
    validation accuracy (ties: the smaller). Returns ``(chosen, records)`` with
    ``records[row][lam]`` (and ``records["baseline"][0.0]``) for the table of the choice.
    An empty ``grid`` chooses nothing (the profile's lambda)."""
    if not grid:
        return {}, {}
    args = data_args(dataset, folders, download)
    cfgs = calibration_configs(
        profile,
        dataset,
        rows,
        grid,
        seed,
        n_val,
        source=args["source"],
        overrides=overrides,
        **_folder_of(dataset, args),
    )
    recs = {
        row: dict(zip(per, _run_all(per.values(), args, device, progress), strict=True))
        for row, per in cfgs.items()
    }
    chosen = {
        row: max(sorted(per), key=lambda lam, per=per: per[lam]["final"]["test_acc"])
        for row, per in recs.items()
        if row != "baseline"
    }
    return chosen, recs


def sweep_configs(
    profile: str,
    dataset: str,
    metric: str,
    lambdas: list[float],
    seed: int,
    *,
    source: str,
    overrides: dict | None = None,
    folder=None,
) -> dict[float, RunConfig]:
    """One student per lambda; lambda = 0 keeps the metric, so its distance is recorded
    (without gradient) for Fig. 2."""
    overrides = _with_data_hash(dataset, folder, overrides)
    return {
        float(lam): student_configs(
            profile,
            dataset,
            [metric],
            seed=seed,
            source=source,
            overrides=overrides,
            lam=float(lam),
        )[metric]
        for lam in lambdas
    }


def sweep_runs(
    profile: str,
    dataset: str,
    metric: str,
    lambdas: list[float],
    seed: int,
    *,
    folders: dict | None = None,
    download: bool | str = "auto",
    device: str = "auto",
    overrides: dict | None = None,
    progress: bool | None = None,
) -> dict[float, dict]:
    """Records of the lambda sweep of Fig. 2, trained or loaded."""
    args = data_args(dataset, folders, download)
    cfgs = sweep_configs(
        profile,
        dataset,
        metric,
        lambdas,
        seed,
        source=args["source"],
        overrides=overrides,
        **_folder_of(dataset, args),
    )
    return {
        lam: run(
            c, folder=args["folder"], download=args["download"], device=device, progress=progress
        )
        for lam, c in cfgs.items()
    }


def embedding_panels(
    configs: dict[str, RunConfig], n: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For Fig. 3: ``{title: (teacher_features, student_features)}`` on the same test
    images, from each run's stored last-epoch monitor (students projected into the
    teacher's feature space when the sizes differ)."""
    out = {}
    for title, cfg in configs.items():
        mon = load_monitor(cfg)
        zt = mon["teacher"].float().numpy()
        zs = mon["epochs"][-1].float().numpy()
        out[title] = (zt[:n], zs[:n]) if n else (zt, zs)
    return out


def run_finished(rec: dict) -> bool:
    """A record is finished, has every epoch and only finite numbers."""
    hist = rec.get("history", [])
    nums = [v for row in hist for v in row.values() if isinstance(v, float)]
    return (
        rec.get("status") == "finished"
        and len(hist) == rec["config"]["epochs"]
        and all(np.isfinite(nums))
    )


def results_records(folder: str | Path) -> dict[str, dict[str, list[dict]]]:
    """Committed records in ``folder`` grouped as :func:`table1_runs` returns them (rows
    ``teacher``, ``baseline``, ``E1``..``G3``, in that order, by each record's role and
    metric). Empty when the folder does not exist."""
    if not Path(folder).is_dir():
        return {}
    row_of = {m: r for r, m in TABLE1_METRICS.items()}
    out: dict[str, dict[str, list[dict]]] = {}
    for rec in load_records(folder):
        c = rec["config"]
        if c["role"] == "teacher":
            row = "teacher"
        elif c["metric"] is None:
            row = "baseline"
        else:
            row = row_of.get(c["metric"])
        if row is not None:
            out.setdefault(row, {}).setdefault(c["dataset"], []).append(rec)
    order = ["teacher", "baseline", *TABLE1_METRICS]
    return {r: out[r] for r in order if r in out}


def results_table(folder: str | Path):
    """Table 1 of the committed records in ``folder`` beside the paper's full table (a
    Styler, as :func:`kd2m.book.plots.table1`), with the hardware, the data copy, the
    ImageNet weights and the wall time of the runs said once in the caption. A folder
    without records gives a one-cell table that says so."""
    import pandas as pd

    from kd2m.book import style
    from kd2m.book.plots import table1

    recs = results_records(folder)
    if not recs:
        return style.styled(pd.DataFrame({"note": [f"no records in {folder}"]}))
    runs = [r for per in recs.values() for rs in per.values() for r in rs]
    devices = sorted({r["hardware"].get("gpu", r["hardware"]["device"]) for r in runs})
    names = {"folder": "offline image-folder copy", "torchvision": "torchvision's files"}
    sources = sorted({names.get(str(r["data"].get("source")), "unknown") for r in runs})
    weights = sorted({"yes" if r["config"]["pretrained"] else "no" for r in runs})
    secs = [r["wall_seconds"] for r in runs]
    caption = (
        f"Runs on {', '.join(devices)}; data: {', '.join(sources)}; "
        f"ImageNet weights: {', '.join(weights)}; "
        f"wall time per run {min(secs):.0f} to {max(secs):.0f} s."
    )
    return table1(recs, caption=caption)


def calibrate_all(
    profile: str,
    datasets: list[str],
    rows: list[str],
    grid: list[float],
    seed: int,
    n_val: int,
    **kw,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[float, dict]]]]:
    """:func:`calibrate` on each dataset, for the KD2M rows among ``rows`` (the Hinton
    control keeps its profile's lambda): ``(chosen[dataset][row], records[dataset])``."""
    kd2m_rows = [r for r in rows if r != "KD"]
    chosen, records = {}, {}
    for ds in datasets:
        chosen[ds], records[ds] = calibrate(profile, ds, kd2m_rows, grid, seed, n_val, **kw)
    return chosen, records
