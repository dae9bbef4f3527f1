"""Multi-seed ablations: per-seed values, mean and sd, paired tests by seed and image by image."""

import csv
import json

import numpy as np
import pytest

from cnl.analysis.ablation import format_ablation, summarise
from cnl.analysis.paired import compare_over_seeds, compare_seed, mcnemar_exact, mean_and_interval, verdict
from cnl.analysis.report import build_report
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import make_config
from cnl.engine.predictions import COLUMNS

IMAGES = 240


def test_student_t_interval_of_the_mean():
    result = mean_and_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3**0.5  # t(0.975, 2 degrees of freedom) x sd 1 / sqrt(3)
    assert (result["mean"], result["std"]) == (2.0, 1.0)
    assert (result["low"], result["high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert mean_and_interval([5.0]) == {"mean": 5.0, "std": None, "low": None, "high": None}
    assert mean_and_interval([1.0, 3.0], min_values=3) == {"mean": 2.0, "std": 2**0.5, "low": None, "high": None}


def correct_on(count: int, seed: int, images: int = IMAGES) -> np.ndarray:
    """Right on ``count`` of ``images``, which ones drawn by ``seed``."""
    right = np.zeros(images, dtype=bool)
    right[np.random.default_rng(seed).permutation(images)[:count]] = True
    return right


def better_by(first: np.ndarray, images: int, seed: int) -> np.ndarray:
    """Right wherever ``first`` is, and on ``images`` more of those it gets wrong."""
    wrong = np.flatnonzero(~first)
    other = first.copy()
    other[np.random.default_rng(seed).permutation(wrong)[:images]] = True
    return other


def compare(pairs):
    return compare_over_seeds([compare_seed(first, other, seed) for seed, (first, other) in enumerate(pairs)])


def test_a_25_point_win_in_every_seed_is_shown_by_the_per_image_test():
    # The flowers: 240 test images, CNL right on 60 more images (25 points) in each seed.
    pairs = [(first, better_by(first, 60, seed)) for seed, first in enumerate([correct_on(97, 0), correct_on(98, 1)])]
    result = compare(pairs)
    assert [s["diff"] for s in result["per_seed"]] == [25.0, 25.0]
    assert all(s["p"] < 1e-6 for s in result["per_seed"]) and result["stratified_p"] < 1e-12
    assert (result["better"], result["worse"], result["low"]) == (2, 0, None)  # no t interval from 2 seeds
    for seed in result["per_seed"]:
        assert 18 < seed["low"] < 25 < seed["high"] < 32  # the paired bootstrap, +-1.96 sqrt(60)/240 ~ 6.3 points
    assert verdict("resnet18_cnl5", "resnet18", result) == (
        "resnet18_cnl5: +25.00 points against resnet18; better in 2 of 2 seeds; each seed p < 1e-6 "
        "(McNemar, 240 images); 2 seeds cannot bound how much another training run would move it."
    )


def discordant(only_other: int, only_first: int, images: int = IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """Two models' answers with exactly these discordant counts (the rest wrong for both)."""
    first, other = np.zeros(images, dtype=bool), np.zeros(images, dtype=bool)
    other[:only_other] = True
    first[only_other : only_other + only_first] = True
    return first, other


def test_the_flowers_ablation_is_better_in_both_seeds_whatever_its_discordant_images():
    # The run: +29.58 and +20.42 points on 240 images, i.e. 71 and 49 more images right.
    # Least favourable to the test: as many discordant images as 240 allow.
    result = compare([discordant(155, 84), discordant(144, 95)])
    assert [round(s["diff"], 2) for s in result["per_seed"]] == [29.58, 20.42]
    assert verdict("resnet18_cnl5", "resnet18", result) == (
        "resnet18_cnl5: +25.00 points against resnet18; better in 2 of 2 seeds; each seed p ≤ 0.0018 "
        "(McNemar, 240 images); 2 seeds cannot bound how much another training run would move it."
    )


def test_two_identical_models_differ_in_nothing():
    pairs = [(correct_on(100, seed), correct_on(100, seed)) for seed in (0, 1)]
    result = compare(pairs)
    assert [(s["p"], s["diff"], s["low"], s["high"]) for s in result["per_seed"]] == [(1.0, 0.0, 0.0, 0.0)] * 2
    assert result["stratified_p"] == 1.0
    assert (
        verdict("b", "a", result)
        == "b: +0.00 points against a; no difference on these images (p = 1 and 1, McNemar, 240 images)."
    )


def test_better_in_one_seed_and_worse_in_the_other_is_not_consistent():
    first = [correct_on(100, 0), correct_on(100, 1)]
    pairs = [(first[0], better_by(first[0], 40, 0)), (better_by(first[1], 40, 1), first[1])]
    result = compare(pairs)
    assert (result["better"], result["worse"]) == (1, 1) and all(s["p"] < 1e-6 for s in result["per_seed"])
    assert verdict("b", "a", result).startswith(
        "b: +0.00 points against a; better in 1 seed, worse in 1: not consistent"
    )


def test_three_seeds_bound_the_training_randomness():
    first = [correct_on(100, seed) for seed in range(3)]
    result = compare([(f, better_by(f, n, seed)) for seed, (f, n) in enumerate(zip(first, (24, 30, 36)))])
    assert result["mean"] == 12.5 and result["std"] == pytest.approx(2.5)
    half = 4.302652729911275 * 2.5 / 3**0.5
    assert (result["low"], result["high"]) == (pytest.approx(12.5 - half), pytest.approx(12.5 + half))
    assert verdict("b", "a", result).endswith(
        f"each seed p < 1e-6 (McNemar, 240 images); [{12.5 - half:+.2f}, {12.5 + half:+.2f}] over 3 seeds "
        "(Student t): beyond what training randomness moved."
    )


def test_small_wins_in_every_seed_are_shown_only_together():
    first = [correct_on(100, seed) for seed in range(3)]
    result = compare([(f, better_by(f, 6, seed)) for seed, f in enumerate(first)])
    assert all(s["p"] == pytest.approx(0.03125) for s in result["per_seed"])  # 6 of 6 discordant: 2 / 2^6
    assert result["stratified_p"] == pytest.approx(2 / 2**18)
    sentence = verdict("b", "a", result)
    assert "better in 3 of 3 seeds; each seed p ≤ 0.031 (McNemar, 240 images)" in sentence
    mixed = compare([(f, better_by(f, n, seed)) for seed, (f, n) in enumerate(zip(first, (2, 3, 9)))])
    assert (
        "better in 3 of 3 seeds; p = 0.5, 0.25 and 0.0039 (McNemar, 240 images), "
        "together p = 1.2e-04 (stratified by seed)" in verdict("b", "a", mixed)
    )
    faint = compare([(f, better_by(f, 3, seed)) for seed, f in enumerate(first)])
    assert "none alone beyond chance (p = 0.25, 0.25 and 0.25, McNemar, 240 images), together p = 0.0039" in verdict(
        "b", "a", faint
    )


def test_mcnemar_and_the_stratified_test_equal_statsmodels_on_a_textbook_table():
    from statsmodels.stats.contingency_tables import StratifiedTable, mcnemar

    # Agresti, An Introduction to Categorical Data Analysis, table 8.1: approval of the
    # president in two surveys of the same 1,600 people: 794 yes-yes, 150 yes-no, 86 no-yes, 570 no-no.
    table = np.array([[794, 150], [86, 570]])
    assert mcnemar_exact(86, 150) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    first = np.repeat([True, True, False, False], table.ravel())
    other = np.repeat([True, False, True, False], table.ravel())
    seed = compare_seed(first, other, 0)
    assert (seed["only_other"], seed["only_first"], seed["diff"]) == (86, 150, -4.0)
    # The paired bootstrap against the large-sample interval of a difference of paired proportions (Agresti 10.1.1).
    n, b, c = 1600, 86, 150
    se = np.sqrt((b + c) - (b - c) ** 2 / n) / n * 100
    assert seed["low"] == pytest.approx(-4 - 1.959964 * se, abs=0.15)
    assert seed["high"] == pytest.approx(-4 + 1.959964 * se, abs=0.15)
    # Stratified by seed = Cochran-Mantel-Haenszel with a stratum per image and seed (statsmodels' chi-square
    # form), and exactly McNemar on the discordant pairs pooled over seeds.
    second = (correct_on(90, 3, 200), correct_on(110, 4, 200))
    pooled = compare_over_seeds([seed, compare_seed(*second, 1)])
    strata = [
        np.array([[a, 1 - a], [o, 1 - o]])
        for f, g in ((first, other), second)
        for a, o in zip(f.astype(int), g.astype(int))
    ]
    cmh = StratifiedTable(strata).test_null_odds(correction=False)
    b_all, c_all = pooled["only_other"], pooled["only_first"]
    assert cmh.statistic == pytest.approx((b_all - c_all) ** 2 / (b_all + c_all), rel=1e-9)
    assert pooled["stratified_p"] == pytest.approx(mcnemar([[0, b_all], [c_all, 0]], exact=True).pvalue, rel=1e-12)


def run_entry(seed, top1, predictions, model="m"):
    return {"seed": seed, "run": f"{model}/seed{seed}", "top1": top1, "top5": 90.0, "best_epoch": 3, "final_top1": top1,
            "train_images_per_s": 10.0, "params": 1000, "classes": 4, "predictions": predictions}  # fmt: skip


def write_correct(path, correct):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for index, right in enumerate(correct):
            writer.writerow(["test", index, f"img{index}.jpg", 0, "a", 0 if right else 1, "a" if right else "b",
                             int(right), "0 1", "0.5"])  # fmt: skip
    return path


def test_the_table_keeps_seed_columns_and_adds_the_per_image_tests(tmp_path):
    config = make_config({"data_root": "x", "img_size": 32})
    first = [correct_on(97, 0), correct_on(98, 1)]
    results = {}
    for name, vectors in (("resnet18", first), ("resnet18_cnl5", [better_by(f, 60, s) for s, f in enumerate(first)])):
        results[name] = [
            run_entry(seed, 100 * v.mean(), write_correct(tmp_path / f"{name}{seed}.csv", v), name)
            for seed, v in enumerate(vectors)
        ]
    rows = summarise(config, results)
    table = format_ablation(rows, config, [0, 1])
    assert "| resnet18_cnl5 | 65.62 ± 0.29 | 90.00 ± 0.00 | +25.00 ± 0.00 |" in table
    assert "| resnet18_cnl5 | 0 | +25.00 | [" in table and "| 60 | 0 | < 1e-6 |" in table
    assert "| resnet18_cnl5 | all: better in 2, worse in 0 | +25.00 | | 120 | 0 | < 1e-6 (stratified) |" in table
    assert "resnet18_cnl5: +25.00 points against resnet18; better in 2 of 2 seeds; each seed p < 1e-6" in table
    assert json.loads(json.dumps(rows))[1]["diff_top1"]["per_seed"][0]["only_other"] == 60
    write_correct(tmp_path / "resnet18_cnl51.csv", first[1][:-1])
    with pytest.raises(ValueError, match="different test images: cannot pair them"):
        summarise(config, results)


def test_ablate_over_two_seeds_keeps_every_run_and_reports_error_bars(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=4, train_per_class=4, test_per_class=2, image_size=40))
    output = tmp_path / "ablation"
    args = [
        "ablate", "--models", "resnet18,resnet18_cnl5", "--seeds", "0,1", "--data-root", str(data),
        "--dataset", "cub", "--img-size", "32", "--epochs", "1", "--global-batch-size", "8", "--workers", "0",
        "--device", "cpu", "--width", "16", "--output", str(output),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "±" in out and "resnet18_cnl5: " in out and "against resnet18" in out
    record = json.loads((output / "ablation.json").read_text())
    assert record["seeds"] == [0, 1]
    for row in record["rows"]:
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        assert all((output / run / "checkpoints" / "best.pt").is_file() for run in row["runs"])
        assert row["top1"] == pytest.approx(sum(r["top1"] for r in row["per_seed"]) / 2)
    # Each run's predictions.csv holds the best epoch's test answers, and the ablation pairs them image by image.
    for row in record["rows"]:
        for run in row["per_seed"]:
            with open(output / run["run"] / "predictions.csv", newline="") as file:
                answers = [r for r in csv.DictReader(file) if r["split"] == "test"]
            assert len(answers) == 8 and 100 * sum(r["correct"] == "1" for r in answers) / 8 == run["top1"]
    paired = record["rows"][1]["diff_top1"]
    assert [s["images"] for s in paired["per_seed"]] == [8, 8] and paired["low"] is None  # two seeds: no t interval
    for seed, first, other in zip(paired["per_seed"], record["rows"][0]["per_seed"], record["rows"][1]["per_seed"]):
        assert seed["diff"] == pytest.approx(other["top1"] - first["top1"])
    assert "McNemar" in out and "paired bootstrap 95%" in out
    report = build_report([output], tmp_path / "report", images=1)
    page = report.read_text()
    assert "mean ± sd over seeds" in page and "resnet18_cnl5/seed1" in page
    # The verdicts and the per-image tests first, then the seed-level table (once each).
    assert page.count("<table>") == 2 and page.index("<th>McNemar p</th>") < page.index("<th>GMACs layers</th>")
    assert page.index("<h2>Verdict</h2>") < page.index("resnet18_cnl5: ") < page.index("<h2>Ablation</h2>")
    assert (tmp_path / "report" / "ablation.png").is_file()


@pytest.mark.slow
def test_the_same_ablation_twice_gives_the_same_table(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=3, image_size=40))
    tables = []
    config = make_config({"data_root": str(data), "img_size": 32})
    for attempt in ("first", "second"):
        args = [
            "ablate", "--models", "resnet18,resnet18_nl5", "--seeds", "0,1", "--data-root", str(data),
            "--dataset", "cub", "--img-size", "32", "--epochs", "2", "--global-batch-size", "4", "--workers", "2",
            "--width", "16", "--device", "cpu", "--deterministic", "--output", str(tmp_path / attempt),
        ]  # fmt: skip
        assert main(args) == 0
        capsys.readouterr()
        rows = json.loads((tmp_path / attempt / "ablation.json").read_text())["rows"]
        tables.append(format_ablation(rows, config, [0, 1], timing=False))
        for row in rows:
            row.pop("train_images_per_s")
            for run in row["per_seed"]:
                run.pop("train_images_per_s")
        tables.append(rows)
    assert tables[0] == tables[2] and tables[1] == tables[3]
