"""Every lab by name (the scheduler labs: replay, no model; the engine labs: the bundled model), and running one."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tracer.labs import (
    async_lab, attention_lab, chunked_latency, engine_labs, explain_lab, prefix_labs, scheduler_labs, spec_lab, structured_output_lab,
    whatif_lab,
)
from tracer.labs.cache import cache_path
from tracer.labs.registry import Lab, LabError, LabResult, environment, parse_params


def registry() -> dict[str, Lab]:
    return {lab.name: lab for lab in scheduler_labs.LABS + prefix_labs.LABS + engine_labs.LABS + chunked_latency.LABS + attention_lab.LABS
                                 + explain_lab.LABS + spec_lab.LABS + structured_output_lab.LABS + async_lab.LABS + whatif_lab.LABS}


def run_lab(name: str, given: dict[str, str] | None = None, cache_dir: Path | None = None) -> LabResult:
    labs = registry()
    if name not in labs:
        raise LabError(f"no lab named {name!r}; labs: {', '.join(sorted(labs))}")
    lab = labs[name]
    params = parse_params(lab, given or {})
    path = cache_path(cache_dir, "labs", name, params, ".json") if cache_dir is not None else None
    if path is not None and path.exists():
        result = LabResult.from_json(json.loads(path.read_text()))
        result.cached = True
        return result
    started = time.perf_counter()
    try:
        result = lab.run(**params)
    except LabError:
        raise
    except Exception as exc:  # a failed experiment is a build error, reported in one line
        raise LabError(f"lab {name} failed: {type(exc).__name__}: {exc}") from exc
    result.seconds = time.perf_counter() - started
    result.params = params
    result.environment = result.environment or environment()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(), indent=1))
    return result
