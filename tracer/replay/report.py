"""Rich rendering of a replay comparison: summary, first divergence, both engines' state there."""
from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tracer.replay.compare import Comparison


def _short(value: Any, limit: int = 90) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_table(comparisons: list[Comparison], radix: dict | None = None) -> Table:
    table = Table(title="replay: step-by-step agreement", show_lines=False)
    table.add_column("engines")
    table.add_column("steps", justify="right")
    table.add_column("agreeing steps", justify="right")
    table.add_column("result")
    for c in comparisons:
        steps = str(c.left_steps) if c.left_steps == c.right_steps else f"{c.left_steps} vs {c.right_steps}"
        if c.agree:
            result = Text("agree on every step", style="green")
        elif c.compared_nothing:
            result = Text("nothing to compare: neither engine ran a step", style="bold red")
        else:
            d = c.divergence
            result = Text(f"diverge at step {d.step}: {', '.join(d.fields)}", style="bold red")
        table.add_row(f"{c.left_engine} vs {c.right_engine}", steps, str(c.agreeing_steps), result)
    if radix is not None:
        matched = radix["total_matched"]
        evicted = radix["total_evicted"]
        detail = (f"matched {matched[radix['left_engine']]} / {matched[radix['right_engine']]}, "
                  f"evicted {evicted[radix['left_engine']]} / {evicted[radix['right_engine']]}")
        result = (Text("nothing to compare: no radix-cache records", style="bold red") if not radix["records"]
                  else Text(f"agree ({detail})", style="green") if radix["agree"]
                  else Text(f"diverge at record {radix['divergence']['index']}: {', '.join(radix['divergence']['fields'])}", style="bold red"))
        table.add_row(f"{radix['left_engine']} vs {radix['right_engine']} (radix cache)", str(radix["records"]), "", result)
    return table


def divergence_tables(c: Comparison) -> list[Table]:
    d = c.divergence
    if d is None:
        return []
    fields_table = Table(title=f"first divergence: step {d.step} ({c.left_engine} vs {c.right_engine})")
    fields_table.add_column("field")
    fields_table.add_column(c.left_engine)
    fields_table.add_column(c.right_engine)
    for name in d.fields:
        fields_table.add_row(name, _short(d.left.get(name)), _short(d.right.get(name)))
    for hint in d.explanation:
        fields_table.add_row("hint", Text(hint, style="yellow"), "")

    state = Table(title=f"state after step {d.step}: request -> queue, computed tokens, scheduled this step")
    state.add_column("request")
    state.add_column(c.left_engine)
    state.add_column(c.right_engine)
    left, right = d.left_state, d.right_state
    request_ids = list(dict.fromkeys(
        [r for s in (left, right) for r in s.get("running", []) + s.get("waiting", [])]
        + [r for s in (left, right) for r, _ in s.get("scheduled", [])]
    ))
    for request_id in request_ids[:40]:
        state.add_row(request_id, _describe(left, request_id), _describe(right, request_id))
    if len(request_ids) > 40:
        state.add_row(f"... {len(request_ids) - 40} more", "", "")
    state.add_row("free blocks", str(left.get("num_free_blocks", "")), str(right.get("num_free_blocks", "")))
    return [fields_table, state]


def _describe(state: dict, request_id: str) -> str:
    if not state:
        return ""
    scheduled = dict((rid, n) for rid, n in state.get("scheduled", []))
    if request_id in state.get("running", []):
        queue = "running"
    elif request_id in state.get("waiting", []):
        queue = "waiting"
    elif any(rid == request_id for rid, _ in state.get("finished", [])):
        queue = "finished"
    else:
        queue = "-"
    computed = state.get("num_computed_tokens", {}).get(request_id)
    parts = [queue]
    if computed is not None:
        parts.append(f"computed {computed}")
    if request_id in scheduled:
        parts.append(f"+{scheduled[request_id]} this step")
    if request_id in state.get("preempted", []):
        parts.append("PREEMPTED")
    return ", ".join(parts)


def known_differences_text(c: Comparison) -> Text:
    # The SGLang-mode comparison lists engine/sglang_scheduler.py's differences from SGLang instead.
    upstream, source = ("SGLang", "engine/sglang_scheduler.py") if c.right_engine == "sglang" else ("vLLM", "engine/scheduler.py")
    text = Text(f"Deliberate differences of our scheduler from {upstream} ({source}):\n", style="bold")
    for item in c.known_differences:
        text.append(f"  - {item}\n")
    return text


def render(comparisons: list[Comparison], radix: dict | None = None) -> Group:
    parts: list[Any] = [summary_table(comparisons, radix)]
    for c in comparisons:
        parts.extend(divergence_tables(c))
    if comparisons:
        parts.append(known_differences_text(comparisons[0]))
    if radix is not None and radix["divergence"] is not None:
        d = radix["divergence"]
        table = Table(title=f"radix cache: first divergence at record {d['index']}")
        table.add_column("field")
        table.add_column(radix["left_engine"])
        table.add_column(radix["right_engine"])
        for name in d[radix["left_engine"]]:
            table.add_row(name, _short(d[radix["left_engine"]][name]), _short(d[radix["right_engine"]][name]))
        parts.append(table)
    return Group(*parts)


def print_report(comparisons: list[Comparison], radix: dict | None = None, console: Console | None = None) -> None:
    (console or Console()).print(render(comparisons, radix))
