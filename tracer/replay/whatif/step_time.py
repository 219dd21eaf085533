"""A step-time model: a step's duration from its batch, fitted by plain least squares on a trace's steps.

Features of one step (what a forward pass's cost grows with): a constant (launch, sampling, the
scheduler's own time), the prompt tokens it computes, the decode tokens (one per decoding request:
the batch's requests are not a feature of their own, it would be collinear with these), the tokens
of context the batch's attention reads (every scheduled request's KV after the step), and the
prefill attention term (each prefill chunk's tokens times the context they attend to).
No coefficient may be negative (more work never makes a step faster): a least-squares fit on a
noisy trace otherwise trades a negative constant against a large per-token term, which fits the
batch sizes the trace had and extrapolates to nonsense for the ones a changed config makes.
The same function computes them when the model is fitted on a trace and when it predicts a replay,
so a fitted coefficient means the same thing in both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

FEATURES = ("const", "prefill_tokens", "decode_tokens", "context_tokens", "prefill_attention")


def step_features(batch: Sequence[tuple[int, int, int]]) -> list[float]:
    """batch: (tokens scheduled, tokens computed before the step, prompt length) per request."""
    prefill = decode = context = attention = 0.0
    for tokens, computed, prompt_len in batch:
        if computed < prompt_len:
            prefill += tokens
            attention += tokens * (computed + tokens) / 1000.0  # per thousand: keeps the columns' scales near
        else:
            decode += tokens
        context += computed + tokens
    return [1.0, prefill, decode, context, attention]


@dataclass
class StepTimeModel:
    coefficients: list[float]  # seconds per unit of each FEATURES entry
    gap_s: float = 0.0  # the engine's time between two busy steps (input / output handling)
    # From a request's arrival at an idle engine to the start of its step (the busy loop wakes and
    # drains its input queue first: requests that arrive together start one step together).
    wake_s: float = 0.0
    features: tuple[str, ...] = FEATURES
    fit_error: dict = field(default_factory=dict)  # the model's own error on the steps it was fitted on

    def predict(self, features: Sequence[float]) -> float:
        """Seconds; never below a tenth of the constant term (a model may extrapolate below zero)."""
        value = sum(c * x for c, x in zip(self.coefficients, features))
        return max(value, 0.1 * abs(self.coefficients[0]), 1e-6)

    def to_json(self) -> dict:
        return {"features": list(self.features), "coefficients": self.coefficients, "gap_s": self.gap_s,
                "wake_s": self.wake_s, "fit_error": self.fit_error}

    @classmethod
    def from_json(cls, data: dict) -> "StepTimeModel":
        return cls(list(data["coefficients"]), float(data.get("gap_s", 0.0)), float(data.get("wake_s", 0.0)),
                   tuple(data.get("features", FEATURES)), dict(data.get("fit_error", {})))


class StepTimeFitError(ValueError):
    """Too few steps to fit the model on."""


def fit_step_time(rows: Sequence[Sequence[float]], durations_s: Sequence[float], gap_s: float = 0.0,
                  wake_s: float = 0.0) -> StepTimeModel:
    """Least squares (numpy.linalg.lstsq) of durations on the feature rows; a feature constant over
    every row (no prefill in the trace, say) gets coefficient 0 rather than an arbitrary split."""
    import numpy as np

    if len(rows) < 3:
        raise StepTimeFitError(f"{len(rows)} steps: too few to fit a step-time model (at least 3)")
    x = np.asarray(rows, dtype=float)
    y = np.asarray(durations_s, dtype=float)
    active = [j for j in range(x.shape[1]) if j == 0 or np.ptp(x[:, j]) > 0]
    coefficients = [0.0] * x.shape[1]
    while active:
        solution, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        negative = [j for j, value in zip(active, solution) if value < 0]
        if not negative:
            for j, value in zip(active, solution):
                coefficients[j] = float(value)
            break
        # Least squares with the most negative feature left out, until none is negative: a plain
        # active-set descent towards the non-negative solution.
        worst = min(negative, key=lambda j: solution[active.index(j)])
        active.remove(worst)
    model = StepTimeModel(coefficients, gap_s, wake_s)
    model.fit_error = model_error(model, rows, durations_s)
    return model


def model_error(model: StepTimeModel, rows: Sequence[Sequence[float]], durations_s: Sequence[float]) -> dict:
    """How far the model is from the measured steps: per step (mean absolute, relative) and over the
    whole run (the sum of durations, what end-to-end latencies add up)."""
    predicted = [model.predict(r) for r in rows]
    errors = [p - d for p, d in zip(predicted, durations_s)]
    total = sum(durations_s)
    relative = sorted(abs(e) / d for e, d in zip(errors, durations_s) if d > 0)
    return {
        "steps": len(rows),
        "mean_abs_ms": 1e3 * sum(abs(e) for e in errors) / len(errors),
        "median_rel": relative[len(relative) // 2] if relative else 0.0,
        "total_rel": (sum(predicted) - total) / total if total else 0.0,
        "measured_mean_ms": 1e3 * total / len(durations_s),
    }
