"""Smoke tests of the training benchmarks (tiny sizes; the full tables come from the CLI)."""

import json
import math
import re

import pytest
import torch

from kd2m import bench


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine two threads can stall each other for
    seconds, and these smoke tests time nothing they assert on."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _positive(rows, key):
    return all(0 < r[key] < math.inf for r in rows)


def test_bench_data_compares_both_pipelines():
    rows = bench.bench_data(n=512, batch_size=64, workers=0)
    assert [r["ratio"] for r in rows][0] == 1.0 and len(rows) == 2
    assert _positive(rows, "images/s")


TINY_STEPS = {"n": 16, "repeats": 1, "warmup": 1, "student": "resnet8", "teacher": "resnet8"}


def test_bench_steps_isolates_each_metric():
    rows = bench.bench_steps(**TINY_STEPS, metrics=["wasserstein", "hinton"])
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


def test_frame_formats_columns_by_their_last_word_and_drops_empty_ones():
    rows = [
        {
            "precision": "bf16",
            "student step images/s": 2818.68728,
            "student ratio": 1.634528,
            "median_ms": 72.4512,
            "step_ms": None,
        },
        {
            "precision": "fp32",
            "student step images/s": 1724.4652,
            "student ratio": 1.0,
            "median_ms": 1.7401,
            "step_ms": None,
        },
    ]
    html = bench.frame(rows).to_html()
    for shown in ("2,819", "1,724", "1.63", "1.00", "72.45", "1.74"):
        assert f">{shown}<" in html, shown
    assert "2818.68" not in html and "step_ms" not in html


TINY = {"arch": "resnet8", "stem": "cifar", "width": 4}


def test_bench_precision_times_four_settings_against_the_trainers():
    rows = bench.bench_precision(n=8, repeats=1, warmup=1, student=TINY, teacher=TINY)
    assert [(r["precision"], r["memory format"]) for r in rows] == [
        ("bf16 autocast", "channels_last"),
        ("bf16 autocast", "contiguous"),
        ("fp32", "channels_last"),
        ("fp32", "contiguous"),
    ]
    assert _positive(rows, "student step images/s") and _positive(rows, "teacher forward images/s")
    (ref,) = [r for r in rows if r["trainer"]]  # on the CPU: fp32, contiguous
    assert (ref["precision"], ref["memory format"]) == ("fp32", "contiguous")
    assert ref["student ratio"] == ref["teacher ratio"] == 1.0
    for r in rows:
        assert r["student ratio"] == r["student step images/s"] / ref["student step images/s"]


def test_bench_precision_cli_prints_the_four_rows(tmp_path, capsys):
    out = tmp_path / "p.json"
    args = ["precision", "--profile", "cpu", "--n", "4", "--repeats", "1", "--json", str(out)]
    assert bench.main(args) == 0
    text = capsys.readouterr().out
    assert "resnet8 student step, resnet20 teacher forward" in text
    lines = [line for line in text.splitlines() if line.startswith(("bf16 autocast", "fp32 "))]
    assert len(lines) == 4 and lines[-1].split()[-1] == "yes"
    blob = json.loads(out.read_text())
    assert len(blob["precision"]) == 4 and "tf32" not in blob  # the TF32 flags: CUDA only


def test_parse_variant_reads_options_as_the_cli_does():
    assert bench.parse_variant("gaussian_kl:diagonal=true") == ("gaussian_kl", {"diagonal": True})
    assert bench.parse_variant("mmd:kernel=polynomial,bandwidth=2.5") == (
        "mmd",
        {"kernel": "polynomial", "bandwidth": 2.5},
    )
    assert bench.parse_variant("hinton") == ("hinton", {})
    for text, why in (
        ("mmd:kernl=polynomial", "unknown option.*kernl"),
        ("mmd:kernel=linear", "kernel"),
        ("mdm:kernel=polynomial", "unknown metric 'mdm'"),
        ("mmd:", "KEY=VALUE pairs after ':'"),
        ("mmd:kernel", "KEY=VALUE"),
        ("gaussian_kl:diagonal=yes", "diagonal"),
    ):
        with pytest.raises(ValueError, match=f"--variant '{re.escape(text)}': .*{why}"):
            bench.parse_variant(text)


def test_bench_steps_variants_add_rows_and_refuse_twice_the_same(capsys):
    variants = [("mmd", {"kernel": "polynomial"}), ("gaussian_kl", {"diagonal": True})]
    rows = bench.bench_steps(**TINY_STEPS, metrics=["mmd"], variants=variants)
    assert [r["step"] for r in rows][1:] == [
        "KD2M mmd",
        "KD2M mmd (kernel=polynomial)",
        "KD2M gaussian_kl (diagonal=true)",
    ]
    assert _positive(rows, "seconds")
    with pytest.raises(ValueError, match="'KD2M mmd' is asked for twice"):
        bench.bench_steps(n=4, repeats=1, metrics=["mmd"], variants=[("mmd", {})])
    with pytest.raises(SystemExit) as exc:
        bench.main(["steps", "--variant", "mmd:kernel=linear"])
    assert exc.value.code == 2 and "--variant 'mmd:kernel=linear'" in capsys.readouterr().err


def test_bench_metrics_variants_time_the_solver_options(capsys):
    rows = bench.bench_metrics(
        n=12,
        d=6,
        repeats=1,
        warmup=0,
        metrics=["wasserstein"],
        step_repeats=0,
        variants=[
            ("wasserstein", {"solver": "auction"}),
            ("class_wasserstein", {"solver": "auction"}),
        ],
    )
    assert [r["metric"] for r in rows] == [
        "wasserstein",
        "wasserstein (solver=auction)",
        "class_wasserstein (solver=auction)",
    ]
    assert [r["table1"] for r in rows] == ["E1", "", ""]
    assert _positive(rows, "median_ms")
    assert (
        bench.main(
            [
                "metrics",
                "--n",
                "8",
                "--d",
                "4",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--step-repeats",
                "0",
                "--metric",
                "mmd",
                "--variant",
                "mmd:kernel=polynomial",
            ]
        )
        == 0
    )
    assert "mmd (kernel=polynomial)" in capsys.readouterr().out
