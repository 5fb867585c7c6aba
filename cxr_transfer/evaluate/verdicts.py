"""The one place a verdict word comes from: every "ahead", "best", "conclusive", "suggestive",
"reverses", "holds" and "collapses" the report prints is `level` / `retention_word` of an interval
built here, by one of three procedures (docs/verdicts.md lists each with the sources of variance it
carries, and tests/test_verdicts_simulation.py measures its coverage and its rate under the null):

- `test_set` - one training run per mode: a percentile bootstrap over the test set's groups
  (patients, or images joined with their near-copies). It carries the test set's sampling noise
  only, so an interval that excludes 0 is at most *suggestive*: another seed may move it.
- `over_runs` - several seeds on one test set: the seeds' spread and the test set's bootstrap
  combined, v = s^2_seeds / S + v_test - (the part of the test noise the seeds' spread already
  holds), with a Student t on Satterthwaite's degrees of freedom. It carries both, so an
  interval that excludes 0 is *conclusive*.
- `over_folds` - k-fold cross-validation: Nadeau and Bengio's corrected t over the k per-fold
  figures (each first averaged over the seeds that share the partition: seeds do not add folds).

Resampling is by weights (each image's multiplicity in a resample of whole groups), so one
(reps, N) matrix resamples every model, seed and figure at once and pairs them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _t_quantile(p: float, df: float) -> float:
    """Student's t quantile. scipy.stats is imported here, not with the module: it costs every
    stage that imports this one about 0.5 s, and only the seed and fold intervals call it."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(p, df))


CONCLUSIVE, SUGGESTIVE, INCONCLUSIVE = "conclusive", "suggestive", "inconclusive"
METHODS = {
    "test_set": "bootstrap over the test set's groups (one run per mode: test-set noise only)",
    "over_runs": "seeds x test set (the seeds' spread and the test-set bootstrap, Satterthwaite's t)",
    "over_folds": "Nadeau-Bengio corrected t over the folds (seeds averaged within each fold)",
}


@dataclass(frozen=True)
class Interval:
    """An estimate, its interval at `confidence`, the training runs whose spread it carries (1: none)
    and the procedure that built it (a key of METHODS)."""

    point: float | None
    lo: float | None
    hi: float | None
    runs: int
    method: str
    confidence: float = 0.95

    @property
    def ci(self) -> list[float] | None:
        return None if self.lo is None or self.hi is None else [self.lo, self.hi]

    def direction(self) -> int:
        """+1 when the interval lies above 0, -1 below, 0 when it holds 0 or is missing."""
        if self.ci is None:
            return 0
        return 1 if self.lo > 0 else -1 if self.hi < 0 else 0

    def level(self) -> str:
        """conclusive (the interval carries training and test noise and excludes 0), suggestive
        (it excludes 0 but carries the test set's noise only), or inconclusive."""
        if self.direction() == 0:
            return INCONCLUSIVE
        return CONCLUSIVE if self.method != "test_set" else SUGGESTIVE

    def as_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 6)  # noqa: E731
        return {
            "point": r(self.point),
            "ci": None if self.ci is None else [r(self.lo), r(self.hi)],
            "confidence": self.confidence,
            "runs": self.runs,
            "method": self.method,
            "level": self.level(),
        }


# --- resampling by weights ---------------------------------------------------------------------


@dataclass(frozen=True)
class Resamples:
    """(reps, n) multiplicities, one row per resample of whole groups, and how many groups."""

    w: np.ndarray
    units: int


def resample(groups, n: int, reps: int, rng: np.random.Generator) -> Resamples:
    """Each row draws the groups (each image its own group where `groups` is None) with
    replacement and gives every image its group's count."""
    if groups is None:
        inv, u = np.arange(n), n
    else:
        _, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        u = int(inv.max()) + 1 if n else 0
    draws = rng.integers(0, u, (reps, u)) + np.arange(reps)[:, None] * u
    counts = np.bincount(draws.ravel(), minlength=reps * u).reshape(reps, u)
    return Resamples(counts[:, inv].astype(float), u)


def weighted_mean(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(reps,) weighted means of a per-image value (correctness: accuracy)."""
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, w @ np.asarray(v, dtype=float) / total, np.nan)


def weighted_auroc(y, s, w: np.ndarray) -> np.ndarray:
    """(reps,) AUROC of scores `s` for y == 1 under each row of weights: the Mann-Whitney statistic
    with ties counted a half; NaN where a resample holds one class. Rows of ones give
    metrics.auroc's value."""
    y, s = np.asarray(y).astype(bool), np.asarray(s, dtype=float)
    order = np.argsort(s, kind="mergesort")
    ss, ys = s[order], y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]
    ws = w[:, order]
    pos, neg = ws * ys, ws * ~ys
    if len(starts) < len(ss):  # tied scores: one column per distinct score
        pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    u = (pos * (below + 0.5 * neg)).sum(1)
    npos, nneg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((npos > 0) & (nneg > 0), u / (npos * nneg), np.nan)


def figure_draws(figure: str, y, scores, correct, w: np.ndarray) -> np.ndarray:
    """(reps,) one figure of one model under each row of weights: `accuracy` (mean of `correct`),
    `auroc` (two classes: `scores` is P(positive)) or `auroc_macro` (one-vs-rest over the columns
    of `scores`, averaged over the classes the set holds: a site may hold only some of them)."""
    if figure == "accuracy":
        return weighted_mean(correct, w)
    scores, y = np.asarray(scores, dtype=float), np.asarray(y)
    if scores.ndim == 1:
        return weighted_auroc(y, scores, w)
    held = [c for c in range(scores.shape[1]) if 0 < (y == c).sum() < len(y)]  # the classes the set holds
    if not held:
        return np.full(len(w), np.nan)
    return np.mean([weighted_auroc(y == c, scores[:, c], w) for c in held], axis=0)


def point_of(figure: str, y, scores, correct) -> float | None:
    """The figure on the whole set (weights all one)."""
    v = float(figure_draws(figure, y, scores, correct, np.ones((1, len(y))))[0])
    return None if math.isnan(v) else v


# --- the three procedures ----------------------------------------------------------------------


def _usable(draws: np.ndarray) -> np.ndarray | None:
    """The finite draws, or None when half or more are undefined (a resample with one class)."""
    ok = draws[np.isfinite(draws)]
    return ok if len(ok) >= 0.5 * len(draws) and len(ok) > 1 else None


def one_run(point: float | None, draws: np.ndarray, confidence: float) -> Interval:
    """One run: the percentile interval of the bootstrap draws."""
    ok = _usable(np.asarray(draws, dtype=float))
    if point is None or ok is None:
        return Interval(point, None, None, 1, "test_set", confidence)
    a = (1 - confidence) / 2
    return Interval(
        point, float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a)), 1, "test_set", confidence
    )


def over_runs(points, draws: np.ndarray, confidence: float, units: int) -> Interval:
    """Several runs (seeds) on one test set: `points` (R,) each run's figure, `draws` (R, reps)
    each run's bootstrap values under the same resamples. The mean's variance is the runs' spread
    over R plus the test set's (the bootstrap variance of the mean over runs), less what the
    runs' spread already holds of the test noise (the runs' own bootstrap variances exceed the
    mean's by it); Student's t on Satterthwaite's degrees of freedom (R - 1 for the runs' part,
    `units` - 1 for the test set's). One run: `one_run`."""
    points, draws = np.asarray(points, dtype=float), np.asarray(draws, dtype=float)
    if len(points) == 1:
        return one_run(float(points[0]), draws[0], confidence)
    m = float(points.mean())
    keep = np.isfinite(draws).all(0)
    if np.isnan(points).any() or keep.sum() < max(2, 0.5 * draws.shape[1]):
        return Interval(None if np.isnan(m) else m, None, None, len(points), "over_runs", confidence)
    d = draws[:, keep]
    r = len(points)
    v_test = float(d.mean(0).var(ddof=1))
    v_each = float(d.var(axis=1, ddof=1).mean())
    shared_in_spread = max(v_each - v_test, 0.0) / (r - 1)  # E[s^2] holds the unshared test noise
    spread = float(points.var(ddof=1)) / r
    v = max(spread - shared_in_spread, 0.0) + v_test
    if v <= 1e-18:
        return Interval(m, None, None, r, "over_runs", confidence)
    df = _degrees(v, spread, v_test, r, units)
    half = _t_quantile((1 + confidence) / 2, df) * math.sqrt(v)
    return Interval(m, m - half, m + half, r, "over_runs", confidence)


def _degrees(v: float, spread: float, v_test: float, runs: int, units: int) -> float:
    """Degrees of freedom of the combined variance. Satterthwaite's (the spread's chi-square has
    R - 1, carrying the runs' part whole, whatever was subtracted from it) is liberal at a few
    runs: a spread small by chance makes the test part look dominant and the t too narrow (3 runs:
    93% for a 95% interval when the runs dominate). Capped at (R - 1) v / spread, linear in the
    test part's share, it holds 94.4-96.1% at 3 to 5 runs (docs/verdicts.md); two runs: R - 1."""
    if runs == 2 or spread <= 0:
        return float(runs - 1) if spread > 0 else float(max(units - 1, 1))
    satterthwaite = v**2 / (spread**2 / (runs - 1) + v_test**2 / max(units - 1, 1))
    return min(satterthwaite, (runs - 1) * v / spread)


def over_folds(per_fold: np.ndarray, test_over_train: float, confidence: float) -> Interval:
    """k-fold: `per_fold` (k, S) each fold's figure (or difference) for each seed that shares the
    partition. Seeds are averaged within a fold first (they repeat a fold, they add none), then
    Nadeau and Bengio's corrected t over the k fold means: mean -/+ t(k-1) sqrt((1/k + n_test /
    n_train) s^2)."""
    per_fold = np.asarray(per_fold, dtype=float)
    per_fold = per_fold[:, None] if per_fold.ndim == 1 else per_fold
    means = per_fold[~np.isnan(per_fold).any(1)].mean(1)
    k = len(means)
    m = float(means.mean()) if k else None
    runs = per_fold.shape[0] * per_fold.shape[1]
    if k < 2:
        return Interval(m, None, None, runs, "over_folds", confidence)
    sd = float(means.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(m)):  # identical differences: no spread, no interval (never width 0)
        return Interval(m, None, None, runs, "over_folds", confidence)
    half = _t_quantile((1 + confidence) / 2, k - 1) * math.sqrt((1 / k + test_over_train) * sd**2)
    return Interval(m, m - half, m + half, runs, "over_folds", confidence)


# --- words -------------------------------------------------------------------------------------


def ahead(a: str, b: str, iv: Interval) -> str:
    """Who is ahead on an A-minus-B interval, in the words its level allows."""
    lvl, d = iv.level(), iv.direction()
    if lvl == INCONCLUSIVE:
        return "no winner (inconclusive)"
    return f"{a if d > 0 else b} ahead ({lvl})"


def retention(internal: np.ndarray, external: np.ndarray) -> np.ndarray:
    """How much of its margin over chance (AUROC 0.5) a figure keeps at another site, as a
    difference from keeping half: (external - 0.5) - (internal - 0.5) / 2. Above 0: it keeps
    more than half (holds); below: it loses more than half (collapses)."""
    return (np.asarray(external) - 0.5) - 0.5 * (np.asarray(internal) - 0.5)


def retention_word(iv: Interval) -> str:
    """holds / collapses where the retention interval excludes 0 (above / below), else unclear."""
    d = iv.direction()
    return "holds" if d > 0 else "collapses" if d < 0 else "unclear"


def bonferroni(confidence: float, comparisons: int) -> float:
    """The per-comparison confidence that keeps the chance of any false claim among
    `comparisons` at 1 - confidence (for "reverses": any mode ahead of the internal leader)."""
    return 1 - (1 - confidence) / max(comparisons, 1)


# --- runs on a set: what the procedures take ---------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One run's view of one set: each image's label (two classes: 1 = positive), score
    (P(positive), or the (N, K) probabilities) and whether its decision was right."""

    y: np.ndarray
    scores: np.ndarray
    correct: np.ndarray

    @staticmethod
    def of(pred, classes: list[str], positive: str | None) -> Scored:
        """From a predictions.csv frame (evaluate's or external_eval's)."""
        correct = (pred["predicted"] == pred["class"]).to_numpy()
        if len(classes) == 2:
            y = (pred["class"] == positive).to_numpy().astype(int)
            return Scored(y, pred["probability"].to_numpy(float), correct)
        cols = [f"p_{c}" for c in classes]
        return Scored(pred["label"].to_numpy().astype(int), pred[cols].to_numpy(float), correct)


@dataclass(frozen=True)
class FoldAverage:
    """A k-fold run's view of one set: its figure is the mean over the fold models of each one's
    own figure (like for like with the internal headline, the mean over folds). Each part is a
    fold model's Scored on its rows of the set (`rows`: their indices; None: every row, as on an
    external set that every fold model scores)."""

    parts: tuple[tuple[Scored, np.ndarray | None], ...]
    n: int

    @property
    def y(self) -> np.ndarray:
        return self._pooled("y")

    @property
    def correct(self) -> np.ndarray:
        return self._pooled("correct")

    def _pooled(self, field: str) -> np.ndarray:
        """Each row's value from the fold model that scored it (the first where all did)."""
        first, rows = self.parts[0]
        if rows is None:
            return getattr(first, field)
        out = np.empty(self.n, dtype=getattr(first, field).dtype)
        for part, idx in self.parts:
            out[idx] = getattr(part, field)
        return out

    def draws(self, figure: str, w: np.ndarray) -> np.ndarray:
        per = [
            figure_draws(figure, s.y, s.scores, s.correct, w if idx is None else w[:, idx])
            for s, idx in self.parts
        ]
        return np.mean(per, axis=0)


def run_draws(figure: str, runs: list, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R,) each run's figure on the whole set (NaN where undefined) and (R, reps) under the
    resamples `w`; a run is a Scored or a FoldAverage."""
    ones = np.ones((1, w.shape[1]))
    points, draws = [], []
    for r in runs:
        if isinstance(r, FoldAverage):
            points.append(float(r.draws(figure, ones)[0]))
            draws.append(r.draws(figure, w))
        else:
            points.append(float(figure_draws(figure, r.y, r.scores, r.correct, ones)[0]))
            draws.append(figure_draws(figure, r.y, r.scores, r.correct, w))
    return np.array(points), np.array(draws)


def combine(points: np.ndarray, draws: np.ndarray, confidence: float, units: int) -> Interval:
    """The procedure the runs allow: `one_run` for one, `over_runs` for several."""
    if len(points) == 1:
        p = None if np.isnan(points[0]) else float(points[0])
        return one_run(p, draws[0], confidence)
    return over_runs(points, draws, confidence, units)


def difference(figure: str, a: list[Scored], b: list[Scored], rs: Resamples, confidence: float) -> Interval:
    """A minus B on the same images, run by run (a[i] and b[i] share a seed), under the same
    resamples: the paired procedure over the runs both have."""
    (pa, da), (pb, db) = run_draws(figure, a, rs.w), run_draws(figure, b, rs.w)
    return combine(pa - pb, da - db, confidence, rs.units)


def two_sets(
    figure: str,
    first: list[Scored],
    second: list[Scored],
    rs1: Resamples,
    rs2: Resamples,
    confidence,
    stat=None,
) -> Interval:
    """A statistic of one mode's figure on two independent sets (default: second minus first, the
    drop from internal to external; `retention` for holds / collapses), each set resampled on its
    own, run by run."""
    stat = stat or (lambda a, b: b - a)
    (p1, d1), (p2, d2) = run_draws(figure, first, rs1.w), run_draws(figure, second, rs2.w)
    return combine(stat(p1, p2), stat(d1, d2), confidence, min(rs1.units, rs2.units))


# --- several modes -----------------------------------------------------------------------------


def weakest(levels: list[str]) -> str:
    """The level a claim resting on every one of `levels` has: its weakest."""
    order = (INCONCLUSIVE, SUGGESTIVE, CONCLUSIVE)
    return min(levels, key=order.index) if levels else INCONCLUSIVE


def best_level(leads: dict[str, Interval]) -> str:
    """Whether a mode is best: `leads` holds its difference from each other mode (it minus the
    other). Best only when every interval lies above 0 (an intersection-union test: each at the
    report's confidence, the claim's error is at most that); the claim is as strong as its
    weakest interval."""
    if not leads or any(iv.direction() <= 0 for iv in leads.values()):
        return INCONCLUSIVE
    return weakest([iv.level() for iv in leads.values()])


def ahead_of(leads: dict[str, Interval]) -> tuple[list[str], str]:
    """The modes shown ahead of a leader at a site (`leads`: the leader minus each other mode,
    each interval at a Bonferroni-corrected confidence, so that any one claim among them is wrong
    at most 1 - confidence of the time), and how strongly (the strongest of theirs)."""
    behind = {m: iv.level() for m, iv in leads.items() if iv.direction() < 0}
    if not behind:
        return [], INCONCLUSIVE
    order = (INCONCLUSIVE, SUGGESTIVE, CONCLUSIVE)
    return sorted(behind), max(behind.values(), key=order.index)


def reverses(internal_best: str, site_level: str) -> bool:
    """The ranking reverses at a site only when the internal best is established (conclusive) and
    another mode is conclusively ahead of it there."""
    return internal_best == CONCLUSIVE and site_level == CONCLUSIVE


def jsonable(obj):
    """`obj` with every Interval replaced by its dict (for the report's JSON files)."""
    if isinstance(obj, Interval):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
