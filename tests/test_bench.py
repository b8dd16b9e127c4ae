"""Smoke tests of the training benchmarks (tiny sizes; the full tables come from the CLI)."""

import json
import math

from kd2m import bench


def _positive(rows, key):
    return all(0 < r[key] < math.inf for r in rows)


def test_bench_data_compares_both_pipelines():
    rows = bench.bench_data(n=512, batch_size=64, workers=0)
    assert [r["ratio"] for r in rows][0] == 1.0 and len(rows) == 2
    assert _positive(rows, "images/s")


def test_bench_steps_isolates_each_metric():
    rows = bench.bench_steps(
        n=16,
        repeats=1,
        warmup=1,
        student="resnet8",
        teacher="resnet8",
        metrics=["wasserstein", "hinton"],
    )
    assert [r["step"] for r in rows] == [
        "distance-free (student step + teacher forward)",
        "KD2M wasserstein",
        "KD2M hinton",
    ]
    assert _positive(rows, "seconds") and rows[0]["ratio"] == 1.0


def test_bench_epoch_and_cli_json(tmp_path, capsys):
    rows = bench.bench_epoch(images=256, profile="cpu")
    assert len(rows) == 2 and _positive(rows, "images/s")
    out = tmp_path / "b.json"
    assert bench.main(["data", "--images", "256", "--workers", "0", "--json", str(out)]) == 0
    assert "kd2m Loader" in capsys.readouterr().out
    blob = json.loads(out.read_text())
    assert {"hardware", "data"} <= set(blob)
    assert bench.load_benchmarks(tmp_path)["data"] == blob["data"]
    assert bench.frame(blob["data"], styled=False).index.name == "pipeline"


def test_frame_says_a_one_row_value_in_the_caption_not_in_a_column_of_blanks():
    rows = [
        {"step": "distance-free", "seconds": 0.0097, "ratio": 1.0, "before/after": 1.1048},
        {"step": "KD2M wasserstein", "seconds": 0.0156, "ratio": 1.61, "before/after": None},
    ]
    sty = bench.frame(rows)
    assert list(sty.data.columns) == ["step", "time (ms)", "ratio"]
    assert sty.caption == "before/after (distance-free): 1.1"
