"""The peers bench's verdicts: from measured samples to issue 19's targets, each as a ratio and
met / NOT met by how much, and the Markdown tables of bench/results/peers.md. No timing here:
tests/test_peers_report.py feeds it given numbers.

Samples are kept per run (the bench alternates ours and vLLM), and each side is taken at its best
sample (throughput: the highest; ms/step and latencies: the lowest); vLLM's best also picks the
best of its settings (bf16 / fp32). The spread (lowest..highest sample) is printed beside it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Issue 19's targets, per thread pairing: (metric key, goal, higher is better).
THROUGHPUT_GOAL = 1.2  # ours / vLLM best, offline tok/s at 8 and 32 concurrent
LATENCY_GOAL = 1.0  # ours / vLLM best, batch-1 ms/step and ITL p50 at 4 and 16 clients


@dataclass
class Verdict:
    pairing: str
    target: str
    ours: float
    vllm: float
    vllm_setting: str
    ratio: float  # ours / vLLM
    goal: str  # ">= 1.20x" or "<= 1.00x"
    met: bool
    gap: str  # by how much it is met or missed, in words

    def row(self) -> str:
        state = "met" if self.met else "NOT met"
        return (f"| {self.pairing} | {self.target} | {self.ours:.1f} | {self.vllm:.1f} ({self.vllm_setting}) | "
                f"{self.ratio:.2f}x | {self.goal} | {state} | {self.gap} |")


def best(samples: list[float], higher_is_better: bool) -> float:
    return max(samples) if higher_is_better else min(samples)


def spread(samples: list[float]) -> str:
    return f"{min(samples):.1f}..{max(samples):.1f}" if len(samples) > 1 else "1 run"


def best_setting(by_setting: dict[str, list[float]], higher_is_better: bool) -> tuple[str, float]:
    """The setting whose best sample is best, and that sample (vLLM's "best setting")."""
    scored = {name: best(s, higher_is_better) for name, s in by_setting.items() if s}
    if not scored:
        raise ValueError("no samples for any setting")
    name = (max if higher_is_better else min)(scored, key=scored.get)
    return name, scored[name]


def verdict(pairing: str, target: str, ours: list[float], vllm: dict[str, list[float]], higher_is_better: bool) -> Verdict:
    ours_best = best(ours, higher_is_better)
    setting, vllm_best = best_setting(vllm, higher_is_better)
    ratio = ours_best / vllm_best
    if higher_is_better:
        met = ratio >= THROUGHPUT_GOAL
        goal = f">= {THROUGHPUT_GOAL:.2f}x"
        gap = (f"{(ratio / THROUGHPUT_GOAL - 1) * 100:.0f}% above the goal" if met
               else f"needs {(THROUGHPUT_GOAL / ratio - 1) * 100:.0f}% more throughput")
    else:
        met = ratio <= LATENCY_GOAL
        goal = f"<= {LATENCY_GOAL:.2f}x"
        gap = (f"{(1 - ratio) * 100:.0f}% below vLLM's" if met
               else f"{(ratio - 1) * 100:.0f}% slower than vLLM's (needs {(1 - 1 / ratio) * 100:.0f}% off)")
    return Verdict(pairing, target, ours_best, vllm_best, setting, ratio, goal, met, gap)


def verdicts(pairings: dict[str, dict]) -> list[Verdict]:
    """pairing -> {"offline": {item key: {setting: [tok/s]}}, "batch1_ms": {setting: [ms]},
    "itl_p50_ms" (and "tpot_p50_ms"): {concurrency: {setting: [ms]}}}; ours' setting is named "ours", vLLM's "vllm-*"."""
    out = []
    for pairing, data in pairings.items():
        for key in ("uniform@8", "uniform@32", "mixed@8", "mixed@32"):
            by_setting = data.get("offline", {}).get(key)
            if by_setting and by_setting.get("ours") and _vllm(by_setting):
                out.append(verdict(pairing, f"offline tok/s, {key}", by_setting["ours"], _vllm(by_setting), True))
        batch1 = data.get("batch1_ms")
        if batch1 and batch1.get("ours") and _vllm(batch1):
            out.append(verdict(pairing, "batch-1 decode ms/step", batch1["ours"], _vllm(batch1), False))
        for concurrency in ("4", "16"):
            itl = data.get("itl_p50_ms", {}).get(concurrency)
            if itl and itl.get("ours") and _vllm(itl):
                out.append(verdict(pairing, f"serving ITL p50 ms, {concurrency} clients", itl["ours"], _vllm(itl), False))
            # Not one of the targets: ITL counts gaps between chunks, and a server that sends its
            # tokens in bursts has a low ITL p50 at the same pace, so TPOT (per request) is set beside it.
            tpot = data.get("tpot_p50_ms", {}).get(concurrency)
            if tpot and tpot.get("ours") and _vllm(tpot):
                out.append(verdict(pairing, f"(beside it) serving TPOT p50 ms, {concurrency} clients", tpot["ours"],
                                   _vllm(tpot), False))
    return out


def _vllm(by_setting: dict[str, list[float]]) -> dict[str, list[float]]:
    return {name: s for name, s in by_setting.items() if name.startswith("vllm") and s}


def verdict_table(found: list[Verdict]) -> list[str]:
    return ["| threads | target | ours | vLLM best (setting) | ours / vLLM | goal | state | by how much |",
            "|---|---|---:|---:|---:|---|---|---|", *(v.row() for v in found)]


def verdict_dicts(found: list[Verdict]) -> list[dict]:
    return [asdict(v) for v in found]
