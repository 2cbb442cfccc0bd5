"""scripts/system_deps.sh: what `make demo` / `make test` run first on a fresh machine."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "system_deps.sh"


def _run(target: str, path: str | None = None):
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["/bin/bash", str(SCRIPT), target], capture_output=True, text=True, env=env, timeout=120)


def test_present_system_parts_are_left_alone():
    if not (shutil.which("bwrap") and shutil.which("docker")):
        pytest.skip("run through `make test`, which installs bubblewrap and docker first")
    for target in ("demo", "test"):
        out = _run(target)
        assert out.returncode == 0, out.stderr
        assert "installing" not in out.stderr


@pytest.mark.parametrize("target, missing", [("demo", "bubblewrap"), ("test", "bubblewrap docker.io")])
def test_without_apt_it_stops_with_one_line_naming_the_command(tmp_path, target, missing):
    bin_dir = tmp_path / "bin"   # a machine with a shell but no bwrap, docker or apt-get
    bin_dir.mkdir()
    for tool in ("id", "seq", "sleep", "timeout", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    out = _run(target, path=str(bin_dir))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"ace-jax: missing system packages: {missing}; run: sudo apt-get install -y {missing}"]
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_an_unknown_target_is_a_usage_error():
    out = _run("deploy")
    assert out.returncode == 2 and "usage" in out.stderr
