"""The README's quick start, as a new user runs it: a fresh clone, a fresh virtual environment, the
two commands in order, then the CLI from another folder. This once failed: numba's cache, written
into site-packages by the first command, survived the switch to an editable install and Python
imported the leftover folder as an empty `lowbit` package (`lowbit --version`: ImportError).

pip installs from its usual index and cache (the local mirror, the torch wheel on disk), without
byte-compiling (PIP_NO_COMPILE: the commands stay the README's); the
kernels come from the user-wide kernel cache that the rest of the suite fills, and the demo's
conversion is the session's (it is tested in test_demo), so the test costs mostly pip's time."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


IMPORT_ALL = """
import importlib, pkgutil, lowbit
names = [m.name for m in pkgutil.walk_packages(lowbit.__path__, "lowbit.") if "serve" not in m.name and "lowbit.train" not in m.name]
for name in names:
    importlib.import_module(name)
assert "lowbit.convert.converter" in names and "lowbit.runtime.kernels.decode_step" in names, names
"""


def readme_commands() -> tuple[str, str]:
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    cmds = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(cmds) == 2, cmds
    return cmds[0], cmds[1]


def fresh_clone(dest: Path) -> Path:
    """The tracked files of this tree (what `git clone` gives), without build outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def sh(cmd: str, cwd: Path, env: dict[str, str], timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def home_with_demo_model(tmp_path, smollm2_hf_dir, smollm2_file, monkeypatch):
    """A LOWBIT_HOME whose cache already holds the demo's HF folder and its q4 conversion."""
    from lowbit.model_cache import cached_path

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    folder = home / "models" / smollm2_hf_dir.name
    folder.symlink_to(smollm2_hf_dir)
    monkeypatch.setenv("LOWBIT_HOME", str(home))
    cached_path(str(folder), "q4").symlink_to(smollm2_file("q4"))
    return home


def test_readme_quick_start_in_a_fresh_venv(tmp_path, home_with_demo_model):
    first, second = readme_commands()
    assert first == "pip install . && lowbit demo"
    assert second.startswith("pip install torch==") and second.endswith("python -m pytest -q")
    install_test_deps = second.removesuffix("&& python -m pytest -q").strip()

    clone = fresh_clone(tmp_path / "lowbit")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv), LOWBIT_HOME=str(home_with_demo_model),
               PIP_NO_COMPILE="1")  # pip's byte-compiling of torch and transformers is most of its time
    site = Path(sh("python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'", clone, env).stdout.strip())

    demo = sh(first, clone, env)
    assert "Paris" in demo.stdout
    assert not list((site / "lowbit").rglob("*.nb[ic]"))  # numba's cache stays out of site-packages
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the demo's model was cached, so import what it skipped: every module the install shipped
    # (a sub-package missing from pyproject.toml is absent here); `serve` needs its extra
    sh(f"python -c {shlex.quote(IMPORT_ALL)}", elsewhere, env)

    sh(install_test_deps, clone, env)
    assert not (site / "lowbit").exists()  # no leftover folder to shadow the editable install
    sh(f"{second.split('&&')[-1].strip()} --collect-only", clone, env)  # the test command's imports

    version = sh("lowbit --version", elsewhere, env)
    assert re.search(r"lowbit, version \d+\.\d+", version.stdout)
    model = next((home_with_demo_model / "models").glob("*-q4.lowbit"))
    out = sh(f"lowbit generate {model} -p 'The capital of France is' --max-tokens 8 --temperature 0", elsewhere, env)
    assert out.stdout.strip()
    where = sh("python -c 'import lowbit.runtime; print(lowbit.runtime.__file__)'", elsewhere, env).stdout
    assert where.startswith(str(clone))  # the editable install points at the clone


def test_every_package_is_installed():
    """`pip install .` (not editable) ships only the packages pyproject.toml lists: a sub-package
    missing there works in the editable tree and is absent from a user's install."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    dirs = {name: ROOT / name for name in ("lowbit",)}
    dirs.update({pkg: ROOT / path for pkg, path in tool["package-dir"].items()})
    found = set()
    for pkg, root in dirs.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join((pkg, *rel.parts)) if rel.parts else pkg)
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
