"""Where a what-if prediction's error comes from, step by step: config A's step-time model on config
B's own measured steps, by step kind, and how the decode-only steps spread about the fit.

    .venv/bin/python bench/whatif_diagnose.py --folder .cache/whatif-validation-ours [--a A] [--b B-prefix_caching-1 ...]

Reads the traces bench/whatif_validation.py served into --folder (trace-LABEL.jsonl), replays each
on its own clock (tracer.replay.whatif.session.fit_on_trace: the steps' batches beside their
measured durations), fits the model on A and prices B's steps with it. Prints tables; writes
nothing (a diagnosis, not a result: the validation's results say what whatif predicts).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from tracer.replay.from_trace import load_replayable  # noqa: E402
from tracer.replay.whatif.session import fit_on_trace  # noqa: E402
from tracer.replay.whatif.step_time import FEATURES, StepTimeModel, step_features  # noqa: E402


def kind(batch: list[list[int]]) -> str:
    """decode-N, or prefill: fresh (every chunk starts at 0) / continued (every chunk after context) /
    both, with the step's prompt tokens binned, and +dec when decodes ride along."""
    chunks = [(t, c) for t, c, p in batch if c < p]
    decodes = sum(1 for t, c, p in batch if c >= p)
    if not chunks:
        return f"decode-{decodes}"
    fresh = all(c == 0 for _, c in chunks)
    cont = all(c > 0 for _, c in chunks)
    tokens = sum(t for t, _ in chunks)
    size = next(f"<={b}" for b in (96, 256, 512, 10**9) if tokens <= b).replace("<=1000000000", ">512")
    return f"prefill {'fresh' if fresh else 'cont' if cont else 'both'} {size}{' +dec' if decodes else ''}"


def table(title: str, model: StepTimeModel, steps, features=None) -> None:
    groups: dict[str, list[tuple[float, float]]] = {}
    for s in steps:
        row = features(s.batch) if features else s.features
        groups.setdefault(kind(s.batch), []).append((model.predict(row), s.end_s - s.start_s))
    print(f"\n{title}")
    print(f"{'kind':<28}{'steps':>6}{'measured ms':>13}{'predicted ms':>14}{'pred/meas':>11}")
    total_p = total_m = 0.0
    for name in sorted(groups, key=lambda k: (k.startswith("prefill"), k)):
        pairs = groups[name]
        p, m = sum(a for a, _ in pairs), sum(b for _, b in pairs)
        total_p, total_m = total_p + p, total_m + m
        print(f"{name:<28}{len(pairs):>6}{1e3 * m / len(pairs):>13.1f}{1e3 * p / len(pairs):>14.1f}{p / m:>11.3f}")
    print(f"{'all':<28}{len(steps):>6}{'':>13}{'':>14}{total_p / total_m:>11.3f}")


def spread_line(label: str, model: StepTimeModel, steps) -> str:
    import numpy as np

    ratios = np.array([(s.end_s - s.start_s) / model.predict(s.features) for s in steps if s.features[1] == 0])
    if not ratios.size:
        return f"{label}: no decode-only steps"
    q = np.quantile(ratios, [0.1, 0.5, 0.9, 0.95, 0.99])
    return (f"{label}: {ratios.size} decode steps, measured/predicted p10 {q[0]:.2f} p50 {q[1]:.2f} p90 {q[2]:.2f} "
            f"p95 {q[3]:.2f} p99 {q[4]:.2f} (p90/p50 {q[2] / q[1]:.2f})")


def decode_context(run, log, model: StepTimeModel) -> None:
    """The decode-only steps' measured / predicted against what happened around them: a request
    arriving (the API server's work on the same cores), the step after a prefill step, a finish."""
    import numpy as np

    origin = run.start_ns
    arrivals = sorted((r.client_start_ns if r.client_start_ns is not None else r.arrival_ns) - origin for r in run.requests)
    arrivals = np.array(arrivals) / 1e9
    rows = []
    for i, s in enumerate(log.steps):
        if s.features[1] != 0:
            continue
        ratio = (s.end_s - s.start_s) / model.predict(s.features)
        arrived = bool(((arrivals >= s.start_s) & (arrivals < s.end_s)).any())
        after_prefill = i > 0 and log.steps[i - 1].features[1] > 0
        rows.append((ratio, arrived, after_prefill, bool(s.finished)))
    if not rows:
        return
    ratios = np.array([r[0] for r in rows])
    for name, column in (("a client request began during it", 1), ("after a prefill step", 2), ("a request finished", 3)):
        mask = np.array([r[column] for r in rows])
        if mask.any() and (~mask).any():
            print(f"  decode steps {name}: {mask.sum()} steps, median ratio {np.median(ratios[mask]):.2f}, p90 "
                  f"{np.quantile(ratios[mask], 0.9):.2f}; the others {np.median(ratios[~mask]):.2f}, p90 {np.quantile(ratios[~mask], 0.9):.2f}")
    thirds = np.array_split(ratios, 3)
    print("  by time in the run (thirds): median " + ", ".join(f"{np.median(t):.2f}" for t in thirds))


def old_features(batch) -> list[float]:
    """The features before 2026-12-02 05:40: t * (c + t) pairs for every chunk, and again for a chunk
    after context; no one-thread rule."""
    prefill = decode = context = attention = continued = 0.0
    for t, c, p in batch:
        if c < p:
            prefill += t
            attention += t * (c + t) / 1000.0
            if c > 0:
                continued += t * (c + t) / 1000.0
        else:
            decode += t
        context += c + t
    return [1.0, prefill, decode, context, attention, continued]


SERIAL_MAX = {"serial": 4}  # 0 for a trace of vLLM (main sets it by the trace's engine)


def rule_features(batch) -> list[float]:
    """Today's features with our server's one-thread rule (4 tokens) whether or not the trace records it."""
    return step_features(batch, SERIAL_MAX["serial"])


CANDIDATES = {"old": (old_features, (0, 2, 3)), "rule-4": (rule_features, (0, 2, 3, 5, 6))}


def candidate_fit(name: str, steps) -> StepTimeModel:
    import numpy as np

    import tracer.replay.whatif.step_time as st

    features, decode_columns = CANDIDATES[name]
    x = np.asarray([features(s.batch) for s in steps], dtype=float)
    y = np.asarray([s.end_s - s.start_s for s in steps], dtype=float)
    saved = st.DECODE_FEATURES
    st.DECODE_FEATURES = decode_columns
    try:
        return StepTimeModel(st._fit(x, y))
    finally:
        st.DECODE_FEATURES = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--a", default="A", help="A's label (trace-LABEL.jsonl)")
    parser.add_argument("--b", nargs="*", default=None, help="B labels (default: every trace-B-*-1.jsonl)")
    args = parser.parse_args()
    folder = Path(args.folder)
    labels = args.b or sorted(p.stem[len("trace-"):] for p in folder.glob("trace-B-*-1.jsonl"))
    fitted = {}
    for label in [args.a, *labels]:
        path = folder / f"trace-{label}.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: no such trace")
        run = load_replayable(path)
        model, log, comparison, _ = fit_on_trace(run)
        fitted[label] = (run, model, log)
        coefficients = ", ".join(f"{n} {1e3 * c:.4g}" for n, c in zip(FEATURES, model.coefficients))
        print(f"{label}: {len(log.steps)} steps, replay agrees {comparison.agree}; fit (ms per unit): {coefficients}; "
              f"median step error {100 * model.fit_error['median_rel']:.0f}%")
    run_a, model_a, log_a = fitted[args.a]
    SERIAL_MAX["serial"] = 4 if run_a.engine == "mini" else 0
    print(f"A's trace records the one-thread rule: {run_a.serial_step_max_tokens} (0: not recorded, or none)")
    table(f"A's model on A's own steps ({args.a})", model_a, log_a.steps)
    print(spread_line("  A own", model_a, log_a.steps))
    decode_context(run_a, log_a, model_a)
    for label in labels:
        run_b, model_b, log_b = fitted[label]
        table(f"A's model on {label}'s steps", model_a, log_b.steps)
        table(f"{label}'s own model on its steps", model_b, log_b.steps)
        print(spread_line(f"  {label} own", model_b, log_b.steps))
        print(spread_line(f"  {label} under A's model", model_a, log_b.steps))
        decode_context(run_b, log_b, model_b)
    for name, (features, _) in CANDIDATES.items():
        model_c = candidate_fit(name, log_a.steps)
        print(f"\ncandidate {name}: fit on A (ms per unit) " + ", ".join(f"{1e3 * c:.4g}" for c in model_c.coefficients))
        table(f"candidate {name}: A's fit on A's steps", model_c, log_a.steps, features)
        for label in labels:
            table(f"candidate {name}: A's fit on {label}'s steps", model_c, fitted[label][2].steps, features)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
