"""Where numba keeps lowbit's compiled kernels, and when they are stale.

Numba's own choice writes `__pycache__/*.nbi|nbc` beside the sources, i.e. into
`site-packages/lowbit/...`: pip does not know those files, so an uninstall or an editable switch
leaves a `lowbit/` folder behind that Python then imports as an empty namespace package. Its index
is also keyed by the source file's path (and, before numba 0.68, its mtime), so a fresh clone of
the same code compiles everything again (a minute or more).

`LowbitCacheLocator` (registered first in numba's locator list, before any kernel is decorated)
instead puts every lowbit kernel in one folder outside the installation,

    $NUMBA_CACHE_DIR or <user cache>/lowbit/kernels / <lowbit version>-<cpu>-<kernels' digest>

and stamps each index with the kernels' *content* digest (all of `runtime/kernels/*.py` and
`formats/encodings/*.py`, since kernels inline helpers and constants across those modules), so
an edit anywhere there is never served stale, while a reinstall or a fresh clone of the same
code finds its kernels already compiled. Folders unused for `PRUNE_DAYS` are removed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from numba.core import caching, config

ENV = "NUMBA_CACHE_DIR"
PRUNE_DAYS = 14
_KERNELS = Path(__file__).resolve().parent


def _package_roots() -> list[Path]:
    """Source folders whose numba functions this locator handles (lowbit and its runtime)."""
    roots = [_KERNELS.parent]  # lowbit.runtime (threads.py)
    top = sys.modules.get("lowbit")
    if top is not None and getattr(top, "__file__", None):
        roots.append(Path(top.__file__).resolve().parent)  # lowbit.quant's GPTQ kernel
    return roots


@lru_cache(maxsize=1)
def kernels_digest() -> str:
    """sha256 of the kernels' sources and of the encodings they compile constants from."""
    import lowbit.formats.encodings as encodings

    files = sorted(_KERNELS.glob("*.py")) + sorted(Path(encodings.__file__).resolve().parent.glob("*.py"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def _cpu_key() -> str:
    from llvmlite import binding as ll

    features = ll.get_host_cpu_features().flatten()
    return f"{ll.get_host_cpu_name()}-{hashlib.sha256(features.encode()).hexdigest()[:8]}"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lowbit")
    except Exception:  # not installed (sources on sys.path): the digest still keys the folder
        return "0"


def cache_root() -> Path:
    """$NUMBA_CACHE_DIR when set (numba reads it into config.CACHE_DIR), else the user cache."""
    if config.CACHE_DIR:
        return Path(config.CACHE_DIR).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lowbit")) / "kernels"


@lru_cache(maxsize=1)
def cache_dir() -> Path:
    """This installation's kernel folder (created; a temporary one when the cache is read-only)."""
    key = f"lowbit-{_version()}-{_cpu_key()}-{kernels_digest()[:16]}"
    for root in (cache_root(), Path(tempfile.gettempdir()) / f"lowbit-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        path = root / key
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except OSError:
            continue
        os.utime(path)  # marks it used, for pruning
        _prune(root, keep=path)
        return path
    raise OSError(f"no writable folder for numba's kernel cache (tried {cache_root()})")


def _prune(root: Path, keep: Path) -> None:
    """Remove kernel folders of other versions/sources that nothing used for PRUNE_DAYS."""
    import shutil

    cutoff = time.time() - PRUNE_DAYS * 86400
    try:
        for p in root.glob("lowbit-*"):
            if p != keep and p.is_dir() and p.stat().st_mtime < cutoff:
                shutil.rmtree(p, ignore_errors=True)
    except OSError:
        pass


def kernels_cached() -> bool:
    """True when the decode step (the largest compile) is already in the cache folder."""
    try:
        return any((cache_dir() / "kernels").glob("decode_step*.nbi"))
    except OSError:
        return False


class LowbitCacheLocator(caching._CacheLocator):
    """Numba cache locator for lowbit's own functions: one folder keyed by version, CPU and the
    kernels' digest, index stamped by content (not by the source file's path or mtime)."""

    def __init__(self, py_func, py_file: str) -> None:
        self._py_file = Path(py_file).resolve()
        self._lineno = py_func.__code__.co_firstlineno
        # one sub-folder per source folder: runtime/kernels/ternary.py and quant/ternary.py differ
        self._cache_path = str(cache_dir() / self._py_file.parent.name)

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        if self._py_file.parent == _KERNELS:
            return kernels_digest()
        own = hashlib.sha256(self._py_file.read_bytes()).hexdigest()
        return f"{kernels_digest()}:{own}"

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file: str):
        try:
            path = Path(py_file).resolve()
        except OSError:
            return None
        if not path.is_file() or not any(r == path.parent or r in path.parents for r in _package_roots()):
            return None  # not lowbit's: numba's own locators decide
        try:
            self = cls(py_func, py_file)
            self.ensure_cache_path()
        except OSError:
            return None
        return self


def install() -> None:
    """Put LowbitCacheLocator first in numba's list (idempotent)."""
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.68
    if LowbitCacheLocator not in impl._locator_classes:
        impl._locator_classes.insert(0, LowbitCacheLocator)


install()
