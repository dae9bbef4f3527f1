"""Is one model better than another? Paired tests image by image, and over seeds.

Two kinds of chance stand between two runs' top-1, and each test here covers one of them.

*Which test images there are.* Within one seed both models answer the same N images, so
their accuracies are paired. Only the images on which they disagree tell them apart:
``b`` images only the other model gets right, ``c`` images only the first gets right, and the
difference in top-1 is ``(b - c) / N``. If the two were equally good on every image, each of
the ``b + c`` disagreements would go either way with probability 1/2, so ``b`` would follow
Binomial(b + c, 1/2): the exact McNemar test is that binomial test, two-sided
(``scipy.stats.binomtest``). The paired bootstrap draws N images with replacement, the same
draw for both models, and takes the 2.5 and 97.5 percentiles of the difference over the
draws (``scipy.stats.bootstrap`` on the per-image differences): an interval for how much the
difference would move on another sample of test images of the same kind.

*How training went.* A seed fixes the initial weights, data order and crops; another seed
is another training run. Pooled over seeds, the same null hypothesis (equally good on every
image, in every run) makes each disagreement of every seed a fair coin, independent of the
others, so ``sum b`` follows Binomial(sum (b + c), 1/2): the exact test stratified by seed.
It is the Cochran-Mantel-Haenszel test with one stratum per image and seed, each stratum a
matched pair, in its exact binomial form (its chi-square form is
``(sum b - sum c)^2 / sum (b + c)``). It says whether the models differ on these images in
these runs; it says nothing of how much another training run would move the difference.
That is what the seed-level Student-t interval of the per-seed differences estimates, and
with two seeds (one degree of freedom, t = 12.7) it is too wide to show anything: it is given
from ``SEEDS_FOR_INTERVAL`` seeds on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnl.errors import InvalidValue

ALPHA = 0.05  # a test "shows" a difference below this p
CONFIDENCE = 0.95
SEEDS_FOR_INTERVAL = 3
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_STREAM = 20200  # the bootstrap's own draws: never those of training


def mean_and_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, min_values: int = 2
) -> dict[str, float | None]:
    """Mean, sample standard deviation and the Student-t interval of the mean (the interval
    None below ``min_values`` values, the sd None for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    if std is None or len(values) < min_values:
        return {"mean": mean, "std": std, "low": None, "high": None}
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * std / math.sqrt(len(values))
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half}


def mcnemar_exact(only_other: int, only_first: int) -> float:
    """Two-sided p of the exact McNemar test on the discordant counts (1 when there are none)."""
    from scipy import stats

    total = only_other + only_first
    return 1.0 if total == 0 else float(stats.binomtest(only_other, total, 0.5).pvalue)


def paired_bootstrap(
    first: np.ndarray, other: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile interval (points) of ``top1(other) - top1(first)`` over image resamples."""
    from scipy import stats

    differences = 100.0 * (other.astype(np.float64) - first.astype(np.float64))
    result = stats.bootstrap(
        (differences,),
        np.mean,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        batch=1000,  # bounds memory: 1,000 resamples x N images at a time
        rng=np.random.default_rng([BOOTSTRAP_STREAM, seed]),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_seed(first: np.ndarray, other: np.ndarray, seed: int) -> dict[str, Any]:
    """One seed: two models' top-1 correctness on the same images (bool arrays, same order)."""
    if first.shape != other.shape:
        raise InvalidValue(f"seed {seed}: {len(first)} and {len(other)} images cannot be paired")
    only_other = int(np.sum(other & ~first))
    only_first = int(np.sum(first & ~other))
    low, high = paired_bootstrap(first, other, seed)
    return {
        "seed": seed,
        "images": len(first),
        "diff": 100.0 * (only_other - only_first) / len(first),
        "low": low,
        "high": high,
        "only_other": only_other,
        "only_first": only_first,
        "p": mcnemar_exact(only_other, only_first),
    }


def compare_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Every seed's ``compare_seed``, the stratified test, the seeds on each side and the
    seed-level mean, sd and (from ``SEEDS_FOR_INTERVAL`` seeds) t interval of the difference."""
    diffs = [s["diff"] for s in per_seed]
    only_other = sum(s["only_other"] for s in per_seed)
    only_first = sum(s["only_first"] for s in per_seed)
    return {
        **mean_and_interval(diffs, min_values=SEEDS_FOR_INTERVAL),
        "per_seed": per_seed,
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
        "only_other": only_other,
        "only_first": only_first,
        "stratified_p": mcnemar_exact(only_other, only_first),
    }


def p_number(p: float) -> str:
    """``< 1e-6``, ``3.1e-05`` or ``0.41``: below 1e-6 the exact figure means nothing more."""
    if p < 1e-6:
        return "< 1e-6"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def p_text(p: float) -> str:
    """``p < 1e-6`` or ``p = 0.41``."""
    number = p_number(p)
    return f"p {number}" if number.startswith("<") else f"p = {number}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def p_list(values: list[float]) -> str:
    """``p = 0.41 and 0.73``, or each in full when one is below 1e-6."""
    if all(p >= 1e-6 for p in values):
        return "p = " + _and([p_number(p) for p in values])
    return _and([p_text(p) for p in values])


def _seeds(count: int) -> str:
    return f"{count} seed" + ("" if count == 1 else "s")


def _training_clause(comparison: dict[str, Any]) -> str:
    count = len(comparison["per_seed"])
    if comparison["low"] is None:
        return f"{'one seed' if count == 1 else _seeds(count)} cannot bound how much another training run would move it"
    interval = f"[{comparison['low']:+.2f}, {comparison['high']:+.2f}] over {count} seeds (Student t)"
    if comparison["low"] > 0 or comparison["high"] < 0:
        return f"{interval}: beyond what training randomness moved"
    return f"{interval} includes 0: another training run could reverse it"


def verdict(model: str, first: str, comparison: dict[str, Any]) -> str:
    """One sentence of what the tests show about ``model`` against ``first``, naming each test."""
    per_seed = comparison["per_seed"]
    count, images = len(per_seed), per_seed[0]["images"]
    values = [s["p"] for s in per_seed]
    head = f"{model}: {comparison['mean']:+.2f} points against {first}"
    mcnemar = f"McNemar, {images} images"
    if comparison["better"] and comparison["worse"]:
        return (
            f"{head}; better in {_seeds(comparison['better'])}, worse in {comparison['worse']}: "
            f"not consistent ({p_list(values)}, {mcnemar})."
        )
    side = "better" if comparison["better"] else "worse"
    where = f"{side} in {comparison[side]} of {count} seeds"
    together = f"together {p_text(comparison['stratified_p'])} (stratified by seed)"
    shown = [p < ALPHA for p in values]
    if not any(shown):
        if count > 1 and comparison["stratified_p"] < ALPHA:
            return (
                f"{head}; {where}, none alone beyond chance ({p_list(values)}, {mcnemar}), {together}; "
                f"{_training_clause(comparison)}."
            )
        return f"{head}; no difference on these images ({p_list(values)}, {mcnemar})."
    if not all(shown):
        return f"{head}; {where}; {p_list(values)} ({mcnemar}), {together}; {_training_clause(comparison)}."
    largest = max(values)
    if count == 1:
        tests = p_text(largest)
    else:
        tests = "each seed p < 1e-6" if largest < 1e-6 else f"each seed p ≤ {p_number(largest)}"
    return f"{head}; {where}; {tests} ({mcnemar}); {_training_clause(comparison)}."
