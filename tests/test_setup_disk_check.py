"""Setup refuses to build a venv it has no room for, with the size it needs (not pip's Errno 28)."""
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check-disk.sh"


def run_check(venv: Path, gib: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(venv), str(gib)], capture_output=True, text=True)


def test_a_new_venv_larger_than_the_free_space_is_refused_with_its_size(tmp_path):
    result = run_check(tmp_path / "venv", 10**6)
    assert result.returncode == 1
    assert "needs about 1000000 GiB free" in result.stderr
    assert "run make again" in result.stderr


def test_a_new_venv_that_fits_passes(tmp_path):
    assert run_check(tmp_path / "venv", 0).returncode == 0


def test_an_existing_venv_is_an_update_and_is_not_measured(tmp_path):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    python.chmod(0o755)
    assert run_check(tmp_path / "venv", 10**6).returncode == 0
