"""`pip install servetrace` into a user's vLLM or SGLang environment: it adds what tracing and the
explorer need and changes none of the packages already there (pip's own dry-run report, with each
live venv's pip, on the wheel built from this checkout); and with only those core packages the CLI
runs the commands a user needs there, while the engine's commands name the extra to install.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Packages of the engine extra: none of them may come with the core install.
ENGINE_ONLY = {"torch", "transformers", "fastapi", "uvicorn", "gguf", "numpy", "openai", "safetensors", "tokenizers"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("servetrace-*.whl")
    return built


def installed_versions(python: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, timeout=120).stdout
    return {canonical(name): version for name, version in json.loads(out).items()}


def test_core_dependencies_are_tracing_and_the_explorer_only():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {canonical(re.split(r"[<>=!~;\[ ]", dep)[0]) for dep in project["dependencies"]}
    assert not core & ENGINE_ONLY
    assert {"opentelemetry-sdk", "textual", "rich", "msgspec", "pyyaml"} <= core
    assert {"engine", "site", "test"} <= set(project["optional-dependencies"])


@pytest.mark.parametrize("venv", [".venv-vllm", ".venv-sglang"])
def test_installing_the_wheel_into_a_live_engine_venv_only_adds_packages(venv, wheel, tmp_path):
    python = REPO / venv / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{venv} is missing: run `make setup`")
    report = tmp_path / "report.json"
    result = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), str(wheel)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    before = installed_versions(python)
    planned = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "servetrace" in planned
    planned.pop("servetrace")  # the venv holds this checkout as an editable install: the same distribution
    changed = {name: (before[name], version) for name, version in planned.items() if name in before}
    assert not changed, f"{venv}: installing servetrace would change {changed}"
    assert not set(planned) & ENGINE_ONLY


def test_with_only_the_core_dependencies_the_user_commands_work_and_engine_commands_name_the_extra(wheel, tmp_path):
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert not set(installed_versions(venv / "bin" / "python")) & ENGINE_ONLY
    trace = tmp_path / "trace.jsonl"
    # A real trace to read, written by our engine in the full venv (the core venv cannot run it).
    subprocess.run([sys.executable, "-m", "tracer.cli", "generate", "Hi", "--max-tokens", "3", "--trace", str(trace)],
                   check=True, capture_output=True, text=True, timeout=300, cwd=REPO)

    def servetrace(*argv: str) -> subprocess.CompletedProcess[str]:
        # cwd outside the checkout: the installed wheel is imported, not this tree.
        return subprocess.run([str(venv / "bin" / "servetrace"), *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)

    for argv in (["hops", "--engine", "vllm"], ["check"], ["tui", "--summary", str(trace)],
                 ["export", str(trace), "--format", "perfetto", "-o", str(tmp_path / "t.json")]):
        result = servetrace(*argv)
        assert result.returncode == 0, f"{argv}: {result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "t.json").read_text())
    for argv in (["serve", "--port", "1"], ["generate", "hi"]):
        result = servetrace(*argv)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "pip install 'servetrace[engine]'" in result.stderr



def test_the_wheel_carries_the_labs_data(wheel):
    """The structured-output lab reads its 20 schemas from package data, so it runs from the wheel."""
    import zipfile

    assert "tracer/labs/data/structured_output_schemas.json" in zipfile.ZipFile(wheel).namelist()
