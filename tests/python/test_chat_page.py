"""The chat page at `/`, in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright. Pick a model, send a message and watch the reply stream in, stop a long reply
(the server cancels it), reload and find the conversation again; a server with an API key
makes the page ask for it."""
import shutil
import time

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import MODEL, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here (scripts/install-deps.sh installs Debian's chromium; it could not)")


@pytest.fixture(scope="module")
def page_server():
    s = Server("--preload", models=(f"smol={MODEL}",), ctx_size=2048, parallel=2)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def root(server):
    return server.base_url.removesuffix("/v1")


def running(server):
    ready = httpx.get(root(server) + "/health/ready").json()
    return ready["models"]["smol"].get("running", 0)


def test_chat_stream_stop_and_history(page_server, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(root(page_server) + "/")
    expect(page.locator("#status")).to_have_text("Ready.")
    page.select_option("#model", "smol")
    # Greedy and short, so the reply is quick.
    page.click("#toggle-settings")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "Name three colours.")
    page.keyboard.press("Enter")
    reply = page.locator(".message.assistant").last
    expect(reply).not_to_be_empty(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("tok/s", timeout=60_000)
    assert "TTFT" in page.locator("#status").inner_text()
    first_reply = reply.inner_text()

    # A long reply, stopped: the page says so and the server stops generating.
    page.fill("#max-tokens", "1500")
    page.fill("#prompt", "Write a very long story about a lighthouse keeper.")
    page.click("#send")
    expect(page.locator("#stop")).to_be_enabled()
    expect(page.locator(".message.assistant").last).not_to_be_empty(timeout=60_000)
    page.click("#stop")
    expect(page.locator("#status")).to_contain_text("Stopped", timeout=10_000)
    deadline = time.monotonic() + 10
    while running(page_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running(page_server) == 0, "the stopped request is still generating"

    # The conversation survives a reload.
    page.reload()
    expect(page.locator(".message.user")).to_have_count(2)
    expect(page.locator(".message.assistant").first).to_have_text(first_reply)
    # Settings too; and a new chat clears it.
    page.click("#toggle-settings")
    expect(page.locator("#temperature")).to_have_value("0")
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    context.close()


def test_markdown_is_rendered_safely(page_server, browser):
    page = browser.new_page()
    page.goto(root(page_server) + "/")
    expect(page.locator("#status")).to_have_text("Ready.")
    # A stored conversation with Markdown and an injection attempt, rendered on load.
    page.evaluate("""localStorage.setItem("hearth.chat.v1", JSON.stringify({messages: [
        {role: "user", content: "<img src=x onerror=alert(1)>"},
        {role: "assistant", content: "**bold** and `code`\\n\\n```python\\ndef f():\\n    return 1\\n```\\n<script>alert(1)</script>"}
    ]}))""")
    page.reload()
    assistant = page.locator(".message.assistant")
    expect(assistant.locator("strong")).to_have_text("bold")
    expect(assistant.locator("pre code .tok-keyword").first).to_have_text("def")
    assert assistant.locator("script").count() == 0
    assert page.locator(".message.user img").count() == 0
    expect(page.locator(".message.user")).to_have_text("<img src=x onerror=alert(1)>")
    page.close()


def test_the_page_asks_for_an_api_key(browser):
    server = Server("--api-key", "sesame", "--preload", models=(f"smol={MODEL}",), parallel=1)
    try:
        page = browser.new_page()
        page.goto(root(server) + "/")
        expect(page.locator("#key-dialog")).to_be_visible()
        page.fill("#api-key", "sesame")
        page.click("#key-form button")
        expect(page.locator("#status")).to_have_text("Ready.")
        expect(page.locator("#model option")).to_have_text(["smol (loaded)"])
        page.close()
    finally:
        server.stop()


def test_images_can_be_attached_for_a_model_with_vision(browser, tmp_path):
    mmproj = MODEL.parent / "smollm2-test-mmproj.gguf"
    s = Server("--mmproj", f"eyes={mmproj}", models=(f"eyes={MODEL}", f"smol={MODEL}"),
               ctx_size=1024, parallel=1)
    try:
        from PIL import Image
        picture = tmp_path / "red.png"
        Image.new("RGB", (32, 32), (220, 20, 20)).save(picture)
        page = browser.new_page()
        page.goto(root(s) + "/")
        expect(page.locator("#status")).to_have_text("Ready.")
        page.select_option("#model", "smol")
        expect(page.locator("#attach-button")).to_be_hidden()
        page.select_option("#model", "eyes")
        expect(page.locator("#attach-button")).to_be_visible()
        page.set_input_files("#attach", str(picture))
        expect(page.locator("#attached img")).to_have_count(1)
        page.click("#toggle-settings")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "8")
        page.fill("#prompt", "What colour is this?")
        page.keyboard.press("Enter")
        expect(page.locator(".message.user img.thumb")).to_have_count(1)
        expect(page.locator("#status")).to_contain_text("tok/s", timeout=60_000)
        expect(page.locator(".message.assistant").last).not_to_have_class("message assistant error")
        expect(page.locator("#attached img")).to_have_count(0)
        page.close()
    finally:
        s.stop()
