"""Accuracy-aware fallback: keep the most sensitive layers in float until int8 meets its gate on the tuning images.

The loop of Intel Neural Compressor's and AIMET's accuracy-aware tuning, with our parity
gate as the criterion (Criterion: the gate on the tuning images, and the agreement
forecast from their logit errors above the gate by a margin):

1. Build the plain int8 artifact (only the `always_float` layers in float: the logits
   layer, see options.py) and judge it on the tuning images. Passing: done.
2. Per-layer sensitivity on a simulation of the toolchain (simulate.py): for each layer,
   how much of the int8 logit error goes away when only that layer stays float.
3. Rank layers by that gain (within a cap on the float share of MACs) and build real
   artifacts of growing prefixes, from the most sensitive layer alone; when that misses, the
   next picks are chosen each given the ones before (`refined_ranking`: a tensor between two
   layers stays float only when both are). A miss doubles the prefix, a pass bisects back
   for a cheaper one. A file worse than the shorter prefix before it (a lower forecast
   agreement, or no file at all) bisects back; when one layer made it worse, that layer
   leaves the ranking. Up to `max_attempts - INPUT_RUN_ATTEMPTS` real artifacts. Why from the
   cheap end and not from the prefix the simulation says passes: the simulation ranks well
   but misjudges long prefixes (on Lite0 it passed 14 float layers that made the TFLite file
   lose 4 points; the stem alone passed).
4. When no prefix of the ranking passed: float runs from the input end (the first 1, 2, 4, ... layers in graph
   order, then the longest within the cap; a pass bisects back), up to `max_attempts` real artifacts in all. Why:
   on Lite0 a run of the stem and the first blocks lowered every target's error more than the sets of single
   layers the ranking offered, which measures layers one at a time and seldom puts a run together. ONNX on the
   AMD EPYC (tuning forecast): the ranking's best file 98.60 %; the stem alone 98.50 %, stem to block 1 (6 layers,
   13.1 % of MACs) 98.80 %, stem to block 2 (9 layers, 19.8 %) 98.81 %. TFLite's best file so far had the stem
   and block 0's depthwise layer float.
5. The cheapest passing attempt is kept, else the one with the highest forecast. Every
   decision is made on the tuning images; the gate images judge the result afterwards, once
   (the exporter does that), so the reported gate number is not the number the search
   optimised.

Nothing here knows a format: `attempt` builds and judges a real artifact, `simulate`
returns simulated logits; both take the set of layer names to leave in float.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from dermmobile.parity import TOLERANCES, ParityReport, apply_gate, compare_logits
from dermmobile.quantization.simulate import Layer, float_share


@dataclass
class TuningReport(ParityReport):
    """The parity report of an attempt on the tuning images, with the agreement forecast from its errors."""

    forecast_agreement: float = 1.0


@dataclass
class MarginPopulation:
    """The photos whose float logits the forecast breaks with the tuning photos' int8 errors, and how much each counts.

    Why not the tuning photos alone: they are photos the model trained on, and a trained model is surer of those. On
    the 2-core EPYC's default-recipe Lite0 (TFLite, plain int8) their errors, added to their own float logits,
    forecast 99.53 %; added to the gate photos' float logits 97.86 %, and the gate agreed on 97.96 % (failed by one
    photo). Photos unseen by training (the validation split the checkpoint records) forecast 98.17 %, the gate's
    143 held-out photos 96.89 %. So every photo the search may look at (calibration and tuning) counts, and those
    training never fitted (`unseen`) count for the share of the gate that is unseen by training (post-stratification):
    99.34 % on the 266 seen ones and 98.17 % on the 54 unseen gave 98.91 % for that file, which misses the search's
    99 % and sends it on. The gate itself is never looked at: only its share of unseen photos, fixed by the split.
    """

    logits: np.ndarray  # float logits, one row per photo
    weights: np.ndarray  # how much each photo counts; they sum to 1
    own: np.ndarray  # the row of the tuning photos' errors that is this photo's own (-1: none): never borrowed
    unseen: np.ndarray | None = None  # which photos training never fitted (for the manifest)

    @classmethod
    def of(cls, tuning: np.ndarray, tuning_unseen=None, others: np.ndarray | None = None, others_unseen=None,
           unseen_share: float | None = None) -> MarginPopulation:  # fmt: skip
        """The tuning photos' float logits (their own errors are theirs) and `others` (calibration), weighted so that
        the photos unseen by training make up `unseen_share` (the gate's); uniform when only one kind is present or
        the share is unknown."""
        others = np.zeros((0, tuning.shape[1])) if others is None else np.asarray(others)
        logits = np.concatenate([np.asarray(others, dtype=np.float64), np.asarray(tuning, dtype=np.float64)])
        own = np.concatenate([np.full(len(others), -1), np.arange(len(tuning))])

        def flags(values, count):
            return np.zeros(count, bool) if values is None else np.asarray(values, bool).reshape(count)

        unseen = np.concatenate([flags(others_unseen, len(others)), flags(tuning_unseen, len(tuning))])
        weights = np.full(len(logits), 1.0 / max(1, len(logits)))
        if unseen_share is not None and unseen.any() and (~unseen).any():
            weights = np.where(unseen, unseen_share / unseen.sum(), (1 - unseen_share) / (~unseen).sum())
        return cls(logits, weights, own, unseen)

    def describe(self) -> dict:
        """What the manifest records: how many photos, how many unseen by training, and how much those count."""
        unseen = np.zeros(len(self.logits), bool) if self.unseen is None else self.unseen
        return {
            "photos": len(self.logits),
            "tuning_photos": int((self.own >= 0).sum()),
            "unseen_by_training": int(unseen.sum()),
            "unseen_weight": round(float(self.weights[unseen].sum()), 4),
        }


@dataclass
class Criterion:
    """When is an int8 artifact good enough on the tuning images: they pass the int8 gate themselves, and the
    agreement forecast from their logit errors (forecast_agreement) reaches the gate plus a safety margin.
    `population`: the photos the forecast is made on (MarginPopulation; None: the tuning photos alone)."""

    labels: list[str]
    margin: float = 0.01  # forecast agreement above the gate: the gate images are another, larger sample
    population: MarginPopulation | None = None

    @property
    def min_forecast_agreement(self) -> float:
        return TOLERANCES["int8"].min_agreement + self.margin

    def judge(self, reference: np.ndarray, logits: np.ndarray, targets: np.ndarray | None, what: str) -> TuningReport:
        report = apply_gate(compare_logits(reference, logits, self.labels, None, targets), "int8", what)
        forecast = forecast_agreement(reference, logits, self.population)
        report = TuningReport(**vars(report), forecast_agreement=forecast)
        if report.forecast_agreement < self.min_forecast_agreement and not report.failures:
            report.failures.append(
                f"{what}: forecast agreement {report.forecast_agreement:.2%} is below the search target "
                f"{self.min_forecast_agreement:.1%} (the {TOLERANCES['int8'].min_agreement:.0%} gate + {self.margin:.1%} margin)"
            )
        return report


def forecast_agreement(reference: np.ndarray, logits: np.ndarray, population: MarginPopulation | None = None,
                       chunk: int = 64) -> float:  # fmt: skip
    """The top-1 agreement to expect on new photos: each photo's int8 logit error, taken class by float rank (its
    error on the top class, on the runner-up, ...), added to the float logits of every photo of `population`
    (default: these photos themselves, equally weighted), never to its own.

    Why not the agreement itself: on 192 tuning photos it moves in steps of 0.5 % and a lucky sample decides it.
    For four Lite0 int8 files (benchmarks/forecast_agreement.py, AMD EPYC) the tuning photos flipped 0.8 % and the
    gate photos 1.3 %, while this forecast read the same on either set within 0.05 points for each file: it sees
    every near-tie a photo's error would break, not only the few this sample happens to hold. Which photos' near-ties
    count is `population`'s question (MarginPopulation). A file with a NaN or Inf output is forecast to agree
    nowhere; with nothing to borrow from (one photo), the forecast is the observed agreement."""
    reference = np.asarray(reference, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(logits).all():
        return 0.0
    if population is None:
        count = len(reference)
        population = MarginPopulation(reference, np.full(count, 1.0 / max(1, count)), np.arange(count))
    order = np.argsort(-reference, axis=1)
    errors = np.take_along_axis(logits - reference, order, axis=1)  # each photo's int8 error by its float rank
    ranked = -np.sort(-population.logits, axis=1)  # each population photo's float logits, top class first
    borrowed = len(errors) - (population.own >= 0)  # errors each population photo borrows: all but its own
    total, weight = 0.0, 0.0
    for start in range(0, len(ranked), chunk):
        rows = slice(start, start + chunk)
        keeps = (ranked[rows, None, :] + errors[None, :, :]).argmax(axis=2) == 0  # population photo x error
        own = population.own[rows]
        mine = own >= 0
        keeps[np.flatnonzero(mine), own[mine]] = False  # a photo's own error is its observed agreement, not a forecast
        usable = borrowed[rows] > 0
        shares = keeps.sum(axis=1)[usable] / borrowed[rows][usable]
        total += float((population.weights[rows][usable] * shares).sum())
        weight += float(population.weights[rows][usable].sum())
    if weight <= 0:
        return float((reference.argmax(axis=1) == logits.argmax(axis=1)).all()) if len(reference) else 1.0
    return total / weight


@dataclass
class LayerSensitivity:
    layer: str
    kind: str
    macs: int
    macs_share: float
    float_alone: dict  # agreement, mean_abs_logit, accuracy with only this layer in float
    gain: float  # mean abs logit error removed by keeping only this layer in float
    quantized_alone: dict | None = None  # the same with only this layer quantized (--explain)


@dataclass
class Attempt:
    float_layers: list[str]
    float_macs_share: float
    agreement: float
    mean_abs_logit: float | None  # None: the conversion failed
    accuracy_drop: float | None  # top-1 points lost on the tuning images
    passed: bool
    source: str  # "artifact": a real export judged by its runtime ("simulation" in manifests before 2026-11-27)
    seconds: float = 0.0
    error: str | None = None  # why the converter could not build this float set
    forecast_agreement: float | None = None  # on the tuning images (forecast_agreement); None in older manifests


@dataclass
class FallbackResult:
    float_layers: list[str]
    float_macs_share: float
    passed: bool  # the kept artifact meets the criterion on the tuning images
    attempts: list[Attempt] = field(default_factory=list)
    baseline: dict | None = None  # simulated all-int8 metrics on the sensitivity images
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    note: str = ""
    ranking: list[str] = field(default_factory=list)  # the order the search added layers in (refined_ranking)

    def to_dict(self) -> dict:
        return asdict(self)


def _metrics(report: ParityReport) -> dict:
    return {"agreement": report.agreement, "mean_abs_logit": report.mean_abs_logit, "accuracy": report.accuracy}


def measure_sensitivity(
    simulate: Callable[[np.ndarray, frozenset[str]], np.ndarray],
    layers: list[Layer],
    images: np.ndarray,
    reference: np.ndarray,
    targets: np.ndarray | None,
    labels: list[str],
    quantized_alone: bool = False,
    log: Callable[[str], None] = lambda message: None,
    always_float: frozenset[str] = frozenset(),
) -> tuple[dict, list[LayerSensitivity]]:
    """Simulated metrics with everything quantized (but `always_float`), then with each other layer alone in float
    (and alone quantized)."""
    names = frozenset(layer.name for layer in layers)
    total = sum(layer.macs for layer in layers) or 1
    candidates = [layer for layer in layers if layer.name not in always_float]
    log(f"per-layer sensitivity: {len(candidates)} layers on {len(images)} simulated images")
    float_sets = [frozenset(), *(frozenset({layer.name}) for layer in candidates)]
    if quantized_alone:
        float_sets += [names - {layer.name} for layer in candidates]
    logits = simulate_each(simulate, images, [float_layers | always_float for float_layers in float_sets], log)
    reports = [compare_logits(reference, one, labels, None, targets) for one in logits]
    baseline, alone, only = reports[0], reports[1 : 1 + len(candidates)], reports[1 + len(candidates) :]
    rows = []
    for index, layer in enumerate(candidates):
        row = LayerSensitivity(layer.name, layer.kind, layer.macs, layer.macs / total, _metrics(alone[index]),
                               baseline.mean_abs_logit - alone[index].mean_abs_logit)  # fmt: skip
        if quantized_alone:
            row.quantized_alone = _metrics(only[index])
        rows.append(row)
    return _metrics(baseline), rows


def simulate_each(simulate, images: np.ndarray, float_sets: list[frozenset[str]],
                  log: Callable[[str], None] = lambda message: None) -> list[np.ndarray]:  # fmt: skip
    """`simulate(images, s)` for each float set s; through `simulate.each` when it has one (simulate.Simulation
    computes the sets together, rerunning each from where it differs)."""
    each = getattr(simulate, "each", None)
    if each is not None:
        return each(images, float_sets, log=log)
    return [simulate(images, float_layers) for float_layers in float_sets]


def ranked_prefixes(sensitivity: list[LayerSensitivity], max_float_macs: float,
                    order: list[str] | None = None) -> list[list[str]]:  # fmt: skip
    """Float sets to try, most sensitive layer first (or in `order`, a refined_ranking; layers not in `sensitivity`
    are left out); a layer that would break the MAC cap is skipped."""
    rows = {row.layer: row for row in sensitivity}
    prefixes, chosen, share = [], [], 0.0
    for name in by_gain(sensitivity) if order is None else order:
        row = rows.get(name)
        if row is None or share + row.macs_share > max_float_macs + 1e-12:
            continue
        chosen.append(row.layer)
        share += row.macs_share
        prefixes.append(list(chosen))
    return prefixes


def by_gain(sensitivity: list[LayerSensitivity]) -> list[str]:
    """Layer names, the most sensitive first (the one-at-a-time ranking)."""
    return [row.layer for row in sorted(sensitivity, key=lambda r: r.gain, reverse=True)]


REFINED_PICKS = 3  # layers of the ranking chosen given the ones before them (refined_ranking)


def refined_ranking(simulate, sensitivity: list[LayerSensitivity], images: np.ndarray, reference: np.ndarray,
                    always_float: frozenset[str], max_float_macs: float, picks: int = REFINED_PICKS,
                    log: Callable[[str], None] = lambda message: None) -> list[str]:  # fmt: skip
    """The sensitivity ranking with its first `picks` layers chosen greedily: the most sensitive layer, then each
    time the layer whose float version removes the most simulated logit error *given the layers already chosen*,
    then the rest by that last measure. The search asks for it only when the most sensitive layer alone missed.

    Why: per-layer sensitivity measures one layer at a time, and a tensor between two layers stays float only when
    both are float. On the default-recipe Lite0 (TFLite, 2-core EPYC) block 0's depthwise convolution was not among
    the 8 most sensitive layers alone, but with the stem float it removed the most error (0.0059 of 0.0591), and the
    real file of those two passed (forecast 98.96 -> 99.22 %) where the ranking's longer sets of single layers
    (up to 5 layers, 8 % of MACs) had not. Each pick is one simulated pass over the layers left (about 35 s for
    Lite0's 49 on 32 photos, 2 cores); a real file is 25-90 s.
    """
    share = {row.layer: row.macs_share for row in sensitivity}
    gains = {row.layer: row.gain for row in sensitivity}
    chosen: list[str] = []
    used = 0.0
    for step in range(picks):
        fits = [name for name in gains if name not in chosen and used + share[name] <= max_float_macs + 1e-12]
        if not fits:
            break
        if step:  # gains given the layers chosen so far
            log(f"ranking: the gain of each of {len(fits)} layers with {', '.join(chosen)} in float")
            base = always_float | frozenset(chosen)
            outputs = simulate_each(simulate, images, [base, *(base | {name} for name in fits)], log)
            errors = [float(np.abs(np.asarray(out, np.float64) - reference).mean()) for out in outputs]
            gains = {name: errors[0] - error for name, error in zip(fits, errors[1:])}
        best = max(fits, key=lambda name: gains[name])
        if gains[best] <= 0:
            break
        chosen.append(best)
        used += share[best]
    rest = sorted((name for name in gains if name not in chosen), key=lambda name: gains[name], reverse=True)
    return chosen + rest + [row.layer for row in sensitivity if row.layer not in gains and row.layer not in chosen]


def search(
    attempt: Callable[[frozenset[str]], TuningReport],
    simulate: Callable[[np.ndarray, frozenset[str]], np.ndarray] | None,
    layers: list[Layer],
    tuning: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    criterion: Criterion,
    max_float_macs: float = 0.25,
    max_attempts: int = 7,
    sensitivity_images: int = 32,
    log: Callable[[str], None] = lambda message: None,
    always_float: frozenset[str] = frozenset(),
) -> FallbackResult:
    """Find the fewest float layers that make the real artifact meet `criterion` on `tuning` (images, reference, targets).

    `always_float`: layers in float in every attempt, plain int8 included; the search adds to them."""
    images, reference, targets = tuning
    run = _Search(attempt, layers, log, always_float)
    result = run.result
    if run.try_real([]).passed:
        kept = f"only {', '.join(sorted(always_float))} in float" if always_float else "no layer left in float"
        result.note = f"plain int8 meets the criterion on the tuning images: {kept}"
        return _keep_best(result)
    if simulate is None or not len(images):
        result.note = "no simulation or no tuning images for this target: plain int8 kept"
        return _keep_best(result)
    subset = spread(len(images), sensitivity_images)
    result.baseline, result.sensitivity = measure_sensitivity(
        simulate, layers, images[subset], reference[subset], None if targets is None else targets[subset], criterion.labels,
        log=log, always_float=always_float,
    )  # fmt: skip
    prefixes = ranked_prefixes(result.sensitivity, max_float_macs)
    if not prefixes:
        result.note = f"no layer fits under the cap of {max_float_macs:.0%} of MACs in float"
        return _keep_best(result)
    result.ranking = by_gain(result.sensitivity)
    if not run.try_real(prefixes[0]).passed:  # more layers are needed: choose each next one given those before it
        result.ranking = refined_ranking(simulate, result.sensitivity, images[subset], reference[subset], always_float,
                                         max_float_macs, log=log)  # fmt: skip
    run.walk(ranked_prefixes(result.sensitivity, max_float_macs, result.ranking), max_float_macs,
             1 + max(1, max_attempts - INPUT_RUN_ATTEMPTS))  # fmt: skip
    if not any(attempt.passed for attempt in result.attempts):
        runs = input_end_runs(layers, always_float, max_float_macs)
        log(f"no prefix of the ranking passed: float runs from the input end ({len(runs)} within the cap)")
        run.grow(runs, 1 + max_attempts)
    return _keep_best(result)


INPUT_RUN_ATTEMPTS = 3  # of the search's `max_attempts` real artifacts, kept for the float runs from the input end


def input_end_runs(layers: list[Layer], always_float: frozenset[str], max_float_macs: float) -> list[list[str]]:
    """Float sets of the first 1, 2, 3, ... layers in graph order (the always-float ones aside), within the cap."""
    order = [layer.name for layer in layers if layer.name not in always_float]
    runs = []
    for count in range(1, len(order) + 1):
        if float_share(layers, [*always_float, *order[:count]]) > max_float_macs + 1e-12:
            break
        runs.append(order[:count])
    return runs


class _Search:
    """The state of one search: every real attempt, by the float set added to the always-float layers."""

    def __init__(self, attempt, layers: list[Layer], log: Callable[[str], None], always_float: frozenset[str]):
        self.attempt, self.layers, self.log = attempt, layers, log
        self.always = sorted(always_float)
        self.result = FallbackResult([], 0.0, False)
        self.real: dict[tuple[str, ...], Attempt] = {}

    def try_real(self, added: list[str]) -> Attempt:
        """Build and judge the real artifact with `added` (and the always-float layers) in float (once per set)."""
        float_layers = self.always + list(added)
        started, share = time.perf_counter(), float_share(self.layers, float_layers)
        try:
            report = self.attempt(frozenset(float_layers))
        except Exception as error:  # any converter's refusal; plain int8 (nothing added) still raises
            if not added:
                raise
            # A converter that cannot leave this set float (until dermmobile spared their pads, ExecuTorch's
            # XNNPACK lowering refused Lite0's depthwise convolutions float): an attempt worse than plain int8.
            done = Attempt(list(float_layers), share, 0.0, None, None, False, "artifact",
                           round(time.perf_counter() - started, 1), f"{type(error).__name__}: {error}"[:300])  # fmt: skip
            self.log(f"{len(float_layers)} layers in float: the conversion failed ({done.error})")
        else:
            done = Attempt(list(float_layers), share, report.agreement, report.mean_abs_logit, _drop(report),
                           report.passed, "artifact", round(time.perf_counter() - started, 1),
                           forecast_agreement=round(report.forecast_agreement, 5))  # fmt: skip
            self.log(f"{len(float_layers)} layers in float ({done.float_macs_share:.1%} of MACs): tuning agreement "
                     f"{done.agreement:.2%}, forecast {report.forecast_agreement:.2%}: "
                     f"{'passes' if done.passed else 'misses'}")  # fmt: skip
        self.result.attempts.append(done)
        self.real[tuple(added)] = done
        return done

    def walk(self, prefixes: list[list[str]], max_float_macs: float, budget: int) -> None:
        """Build real artifacts of growing prefixes of the ranking, from its most sensitive layer, until `budget`
        real artifacts exist in this search (plain int8 counts).

        `shorter` is the longest prefix built that missed without being worse than the one before it, `passing`
        the shortest that passed. A miss doubles the prefix (or bisects toward `passing`); a pass bisects back
        toward `shorter` for a cheaper file; a file worse than `shorter`'s (a lower forecast, or no file)
        bisects back too, and when it is one layer longer, that layer leaves the ranking and the next one is tried.
        """
        shorter, passing, banned = 0, None, set()
        steps = 0
        k: int | None = 1
        while k is not None and len(self.real) < budget and steps < 4 * budget:
            steps += 1
            done = self.real.get(tuple(prefixes[k - 1])) or self.try_real(prefixes[k - 1])
            base = self.real[tuple(prefixes[shorter - 1])] if shorter else self.real[()]
            worse = not done.passed and _worse(done, base)
            if done.passed:
                passing = k
            elif worse and k == shorter + 1:
                # This one layer made the real file worse, or could not be converted float (on Lite0 a float
                # projection convolution cost TFLite 4 points): it leaves the ranking, and the prefix of the
                # same length is tried again.
                banned.add(prefixes[k - 1][-1])
                self.log(f"dropped {prefixes[k - 1][-1]} from the ranking: worse in the real file than without it")
                prefixes = ranked_prefixes([row for row in self.result.sensitivity if row.layer not in banned],
                                           max_float_macs, self.result.ranking)  # fmt: skip
                passing = None  # a pass so far held the dropped layer: none known in the new ranking
                k = k if k <= len(prefixes) else None
                continue
            elif worse:
                k = (shorter + k) // 2  # more than one layer added since `shorter`: find the one that hurts
                continue
            else:
                shorter = k
            k = _next_prefix(shorter, passing, len(prefixes))

    def grow(self, runs: list[list[str]], budget: int) -> None:
        """Build real artifacts of runs 1, 2, 4, ... layers long (then the longest), bisecting back from a pass for a
        shorter one, until `budget` real artifacts exist in this search.

        No file is "worse" here: a run is judged by where it ends, not by the layer it added. On Lite0's ONNX file
        the stem and block 0's depthwise layer float forecast 98.48 % against 98.50 % for the stem alone, and the
        longer runs 98.65 % (4 layers), 98.80 % (6) and 98.81 % (9): dropping that layer would have ended the runs.
        """
        missed, passing = 0, None
        k = _next_prefix(0, None, len(runs))
        while k is not None and len(self.real) < budget:
            done = self.real.get(tuple(runs[k - 1])) or self.try_real(runs[k - 1])
            if done.passed:
                passing = k
            else:
                missed = max(missed, k)
            k = _next_prefix(missed, passing, len(runs))


def _worse(attempt: Attempt, base: Attempt) -> bool:
    """Is this file worse than `base` (plain int8, or the shorter prefix it grew from)? Judged by `_quality`."""
    return _quality(attempt) < _quality(base)


def _quality(attempt: Attempt) -> float:
    """How good a built file is on the tuning images: its forecast agreement, the criterion's own measure; a
    conversion that failed is the worst. Not the observed agreement: on 192 photos it moves in steps of 0.5 % and two
    lucky images decide it. Not the mean logit error, used until 2026-11-28: on Lite0 (AMD EPYC) ExecuTorch's files
    with 3 and 9 float layers read 0.0647 and 0.0640 of logit error, the search kept the 9-layer one (14.1 % of MACs,
    forecast 98.49 %) and the gate failed it with 8 flips; the 3-layer file (forecast 98.59 %) had passed with 5."""
    failed = attempt.error is not None or attempt.forecast_agreement is None
    return -1.0 if failed else attempt.forecast_agreement


def _next_prefix(shorter: int, passing: int | None, count: int) -> int | None:
    """The prefix length to build next: halfway between the longest miss and the shortest pass, or double the
    longest miss while nothing passed (a search from the cheap end: on Lite0 the most sensitive layer, the stem,
    was the one that mattered on every target). None when no length is left between them."""
    if passing is not None:
        middle = (shorter + passing) // 2
        return middle if middle > shorter else None
    grown = min(count, max(1, 2 * shorter))
    return grown if grown > shorter else None


def _keep_best(result: FallbackResult) -> FallbackResult:
    """The passing real attempt with the fewest float MACs, else the built one of the best `_quality` (of those,
    the fewest float MACs; plain int8 is always built)."""
    real = [a for a in result.attempts if a.source == "artifact"]
    passing = [a for a in real if a.passed]
    built = [a for a in real if a.error is None]
    best = (min(passing, key=lambda a: a.float_macs_share) if passing
            else max(built, key=lambda a: (_quality(a), -a.float_macs_share)))  # fmt: skip
    result.float_layers, result.float_macs_share, result.passed = best.float_layers, best.float_macs_share, best.passed
    if not result.note:
        result.note = (
            f"kept {len(best.float_layers)} layers in float ({best.float_macs_share:.1%} of MACs)"
            if best.passed
            else f"no attempt met the criterion within the {len(real)} artifacts tried; kept the best"
        )
    if best.forecast_agreement is not None:
        result.note += f" (tuning agreement {best.agreement:.2%}, forecast {best.forecast_agreement:.2%})"
    return result


def _drop(report: ParityReport) -> float | None:
    if report.accuracy is None or report.reference_accuracy is None:
        return None
    return round((report.reference_accuracy - report.accuracy) * 100, 3)


def spread(count: int, wanted: int) -> np.ndarray:
    """`wanted` indices spread evenly over `count` (the tuning images are in class order)."""
    if count <= wanted:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))
