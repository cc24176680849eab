"""The chat page at / in headless Chromium (Debian's `chromium`, driven by Playwright): it loads,
shows the model's name, streams an answer to a typed question, and the Stop button ends a
stream. A screenshot goes to $LOWBIT_ARTIFACTS (default: <tmp>/lowbit-artifacts)/chat_page.png."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from test_serve import Server, tiny  # noqa: F401 - the fixture

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page_server(tiny):  # noqa: F811
    s = Server(tiny, "--api-key", "page-key")
    yield s
    s.close()


def test_chat_page_streams_an_answer(page_server, tmp_path):
    assert CHROMIUM, "the chat page test needs Debian's chromium package (apt-get install chromium)"
    out_dir = Path(os.environ.get("LOWBIT_ARTIFACTS", Path(tempfile.gettempdir()) / "lowbit-artifacts"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)  # a temporary profile
        try:
            page = browser.new_page()
            page.goto(page_server.url + "/")
            assert page.title() == "lowbit chat"
            page.fill("#key", "page-key")
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny-q4')", timeout=90000)
            page.fill("#input", "What is a low-bit model?")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant[data-done='1']", timeout=120000)
            answer = page.inner_text(".msg.assistant")
            assert answer.strip(), "no answer streamed"
            assert "tok/s" in page.inner_text("#speed")
            assert page.inner_text(".msg.user") == "What is a low-bit model?"
            # a second turn keeps the history and the Stop button ends a stream
            page.fill("#input", "Tell me more")
            # submit and press Stop in one go (the stream must not have ended on its own first)
            page.evaluate("() => { document.getElementById('form').requestSubmit();"
                          " document.getElementById('stop').click(); }")
            page.wait_for_function("document.querySelectorAll('.msg.assistant[data-done=\"1\"]').length == 2",
                                   timeout=90000)
            assert page.locator(".msg.user").count() == 2
            assert page.locator(".msg.assistant").nth(1).inner_text().endswith("[stopped]")
            assert page.is_enabled("#send") and not page.is_enabled("#stop")
            shot = out_dir / "chat_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
            print(f"\nscreenshot: {shot}")
        finally:
            browser.close()
