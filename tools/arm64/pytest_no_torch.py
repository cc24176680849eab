"""pytest plugin for the ARM64 root (tools/arm64/run_tests.sh): a test or test module that fails
only because torch / transformers / accelerate / llama-cpp-python are not installed there is
reported as skipped, naming the module; every other failure stays a failure."""

from __future__ import annotations

import pytest

ABSENT = ("torch", "transformers", "accelerate", "llama_cpp", "playwright")


def _absent_module(excinfo) -> str | None:
    if excinfo is None or not excinfo.errisinstance(ModuleNotFoundError):
        return None
    name = (excinfo.value.name or "").split(".")[0]
    return name if name in ABSENT else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    name = _absent_module(call.excinfo) if rep.failed else None
    if name:
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: needs {name} (not in the ARM64 root)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        text = str(rep.longrepr)
        for name in ABSENT:
            if f"No module named '{name}" in text:
                rep.outcome = "skipped"
                rep.longrepr = (str(collector.path), 0, f"Skipped: needs {name} (not in the ARM64 root)")
                rep.result = []
                break
