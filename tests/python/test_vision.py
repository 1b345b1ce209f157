"""Images in chat requests, end to end, with the default model and a tiny random-weight
projector (scripts/make-test-mmproj.py: 16 tokens an image). A random projector cannot
describe anything; these tests check the plumbing: every input kind, token counts, limits,
refusals, shared memory vs inline transfer, the prompt cache, and text streams beside images.
"""
import base64
import concurrent.futures
import http.server
import io
import pathlib
import re
import tempfile
import threading
import time
import urllib.request

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from conftest import MODEL, ROOT, Server

MMPROJ = ROOT / "models" / "smollm2-test-mmproj.gguf"
TOKENS_PER_IMAGE = 16


def encoded(fmt, size=(40, 30), color=(200, 30, 60)):
    image = Image.new("RGB", size, color)
    for x in range(size[0]):
        image.putpixel((x, x % size[1]), (x * 5 % 256, 255 - x * 3 % 256, 90))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


PNG = encoded("PNG")
MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def data_url(data, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def ask(*parts, text="Describe the image."):
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


class Images(http.server.BaseHTTPRequestHandler):
    """A local image server: plain images, redirects, HTML, slow and oversized bodies."""
    hits = 0

    def do_GET(self):
        Images.hits += 1
        path = self.path
        if path == "/cat.png":
            self.reply(200, "image/png", PNG)
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/cat.png" if n == 0 else f"/redirect/{n - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/page.html":
            self.reply(200, "text/html", b"<html>not an image</html>")
        elif path == "/ten.png":
            self.reply(200, "image/png", PNG + b"\0" * (10 * 1024 * 1024 - len(PNG)))
        elif path == "/to-secret":
            self.send_response(302)
            self.send_header("Location", "/SECRET-TOKEN/cat.png?sig=SIGNATURE")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big.png":
            self.reply(200, "image/png", PNG + b"\0" * (11 << 20))
        elif path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            try:
                for byte in PNG[:20]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)
            except ConnectionError:
                pass
        else:
            self.reply(404, "text/plain", b"no")

    def reply(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except ConnectionError:
            pass  # refused mid-body: what the test wants

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def media_dir():
    with tempfile.TemporaryDirectory() as d:
        (pathlib.Path(d) / "cat.png").write_bytes(PNG)
        yield pathlib.Path(d)


@pytest.fixture(scope="module")
def vision(media_dir):
    """SmolLM2 with the test projector (shared memory), and SmolLM2 without one."""
    s = Server("--mmproj", f"smol={MMPROJ}", "--allowed-media-dir", str(media_dir),
               "--max-image-bytes", "2MiB", "--image-fetch-timeout", "3",
               models=(f"smol={MODEL}", f"plain={MODEL}"), parallel=4)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def inline_vision():
    """The same, images sent inline in the frames, and the local host allowed."""
    s = Server("--mmproj", f"smol={MMPROJ}", "--media-transfer", "inline",
               "--allowed-media-hosts", "127.0.0.1", models=(f"smol={MODEL}",), parallel=2)
    yield s
    s.stop()


def chat(server, messages, model="smol", **kw):
    body = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0, **kw}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120)


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, param=None, code=None, says=None):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if says is not None:
        assert re.search(says, error["message"], re.I), error
    return error


def restarts(server):
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
    return sum(float(v) for v in re.findall(r'^hearth:worker_restarts_total\{[^}]*\} (\S+)$', text, re.M))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_format_as_a_data_url_adds_its_image_tokens(vision, fmt):
    text_only = ok(chat(vision, ask()))["usage"]["prompt_tokens"]
    one = ok(chat(vision, ask(image_part(data_url(encoded(fmt), MIME[fmt])))))
    assert one["choices"][0]["message"]["content"] is not None
    # The image's cells, and the newline joining it to the text part.
    assert one["usage"]["prompt_tokens"] - text_only in (TOKENS_PER_IMAGE, TOKENS_PER_IMAGE + 1)


def test_images_anywhere_in_the_history_and_the_sdk_works(vision):
    client = OpenAI(base_url=vision.base_url, api_key="x")
    url = data_url(PNG)
    messages = [
        {"role": "user", "content": [image_part(url), {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": [{"type": "text", "text": "And these?"}, image_part(url),
                                     {"type": "text", "text": "and"}, image_part(data_url(encoded("JPEG"), "image/jpeg"))]},
    ]
    reply = client.chat.completions.create(model="smol", messages=messages, max_tokens=8, temperature=0)
    assert reply.usage.prompt_tokens > 3 * TOKENS_PER_IMAGE
    stream = client.chat.completions.create(model="smol", messages=messages, max_tokens=8,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == reply.choices[0].message.content


def test_the_same_image_twice_is_deterministic_and_cached(vision):
    messages = ask(image_part(data_url(encoded("PNG", color=(1, 2, 3)))), text="Once more.")
    first = ok(chat(vision, messages))
    second = ok(chat(vision, messages))
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == second["usage"]["prompt_tokens"] - 1


def test_local_files_only_under_the_allowed_directory(vision, media_dir):
    ok(chat(vision, ask(image_part((media_dir / "cat.png").as_uri()))))
    refused(chat(vision, ask(image_part("file:///etc/passwd"))),
            param="messages[0].content[1].image_url", says="outside")
    refused(chat(vision, ask(image_part((media_dir / "missing.png").as_uri()))),
            param="messages[0].content[1].image_url")


def test_local_files_are_off_without_the_flag(inline_vision, media_dir):
    refused(chat(inline_vision, ask(image_part((media_dir / "cat.png").as_uri()))),
            param="messages[0].content[1].image_url", says="allowed-media-dir")


SSRF_FORMS = [
    "http://127.0.0.1:{port}/cat.png", "http://localhost:{port}/cat.png",
    "http://[::1]:{port}/cat.png", "http://2130706433:{port}/cat.png",
    "http://0177.0.0.1:{port}/cat.png", "http://0x7f.1:{port}/cat.png",
    "http://127.1:{port}/cat.png", "http://[::ffff:127.0.0.1]:{port}/cat.png",
    "http://0.0.0.0:{port}/cat.png", "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/x.png", "http://192.168.1.1/x.png", "http://100.64.0.1/x.png",
    "http://[fe80::1]/x.png", "http://[fc00::1]/x.png",
]


def test_private_addresses_are_refused_without_fetching(vision, image_host):
    port = image_host.rsplit(":", 1)[1]
    before = Images.hits
    for form in SSRF_FORMS:
        url = form.format(port=port)
        refused(chat(vision, ask(image_part(url))), param="messages[0].content[1].image_url",
                says="not allowed")
    assert Images.hits == before


def test_allowed_hosts_are_fetched_and_checked(inline_vision, image_host):
    ok(chat(inline_vision, ask(image_part(f"{image_host}/cat.png"))))
    ok(chat(inline_vision, ask(image_part(f"{image_host}/redirect/2"))))
    param = "messages[0].content[1].image_url"
    refused(chat(inline_vision, ask(image_part(f"{image_host}/redirect/5"))), param=param, says="redirect")
    refused(chat(inline_vision, ask(image_part(f"{image_host}/page.html"))), param=param)
    refused(chat(inline_vision, ask(image_part(f"{image_host}/nothing.png"))), param=param, says="404")
    refused(chat(inline_vision, ask(image_part(f"{image_host}/big.png"))), param=param)


def test_redirect_targets_are_never_echoed(inline_vision, image_host):
    error = refused(chat(inline_vision, ask(image_part(f"{image_host}/to-secret"))),
                    param="messages[0].content[1].image_url", says="redirected")
    assert "SECRET" not in error["message"] and "SIGNATURE" not in error["message"]


def test_an_image_the_worker_cannot_decode_names_its_part(vision):
    # The header (and so the size check) is fine; the pixel data is cut short.
    refused(chat(vision, ask(image_part(data_url(PNG[:60])))),
            param="messages[0].content[1].image_url")


def test_a_request_too_large_to_send_inline_fails_alone(inline_vision, image_host):
    # Five 10 MiB images inline (~70 MB of base64) and 14 MB of text are more than one
    # message to a worker may carry: that request gets 413; the worker, and a stream
    # running on it, go on.
    before = restarts(inline_vision)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stream = pool.submit(chat, inline_vision, ask(text="Tell a long story."), max_tokens=48)
        time.sleep(0.3)
        parts = [image_part(f"{image_host}/ten.png")] * 5
        response = chat(inline_vision, ask(*parts, text="x " * 7_000_000))
        assert response.status_code == 413, response.text[:300]
        assert response.json()["error"]["code"] == "request_too_large"
        ok(stream.result())
    assert restarts(inline_vision) == before
    ok(chat(inline_vision, ask(image_part(data_url(PNG)))))


def test_images_held_by_waiting_requests_are_bounded():
    s = Server("--mmproj", f"smol={MMPROJ}", "--max-image-memory", "150KB",
               models=(f"smol={MODEL}",), parallel=1)
    try:
        padded = PNG + b"\0" * 60_000
        ok(chat(s, ask(image_part(data_url(padded)))))
        # Over the whole budget on its own: waiting would not help.
        alone = chat(s, ask(*[image_part(data_url(padded))] * 3))
        assert alone.status_code == 413, alone.text
        # Under it, but not beside a running request that holds its own images.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(chat, s, ask(image_part(data_url(padded))), max_tokens=300)
            time.sleep(1.0)
            busy = chat(s, ask(image_part(data_url(padded)), image_part(data_url(padded))))
            assert busy.status_code == 503, busy.text
            assert busy.headers.get("retry-after") == "1"
            ok(running.result())
        # What the requests held was given back.
        ok(chat(s, ask(image_part(data_url(padded)), image_part(data_url(padded)))))
    finally:
        s.stop()


def test_a_slow_image_times_out(vision, image_host):
    # Allowed host or not, the vision fixture refuses 127.0.0.1 before connecting; the
    # inline fixture allows it but has the default 20 s timeout. Use a fresh server.
    s = Server("--mmproj", f"smol={MMPROJ}", "--allowed-media-hosts", "127.0.0.1",
               "--image-fetch-timeout", "2", models=(f"smol={MODEL}",), parallel=1)
    try:
        started = time.monotonic()
        refused(chat(s, ask(image_part(f"{image_host}/slow.png"))), says="longer than 2 s")
        assert time.monotonic() - started < 10
    finally:
        s.stop()


def test_limits_are_checked_before_decoding(vision):
    five = [image_part(data_url(PNG))] * 5
    ok(chat(vision, ask(*five), max_tokens=2))
    refused(chat(vision, ask(*five, image_part(data_url(PNG)))), param="messages", says="5")
    wide = encoded("PNG", size=(5000, 2))
    refused(chat(vision, ask(image_part(data_url(wide)))), param="messages[0].content[1].image_url",
            says="5000")
    big = encoded("BMP", size=(900, 900))  # not a served format, and over 2 MiB
    refused(chat(vision, ask(image_part(data_url(big, "image/bmp")))),
            param="messages[0].content[1].image_url")
    refused(chat(vision, ask(image_part("data:image/png;base64,not base64!"))),
            param="messages[0].content[1].image_url")
    refused(chat(vision, ask(image_part(data_url(b"GIF89a but truncated", "image/gif")))),
            param="messages[0].content[1].image_url")


def test_what_is_not_served_is_refused_clearly(vision):
    refused(chat(vision, ask(image_part(data_url(PNG))), model="plain"),
            param="messages[0].content[1].type", code="model_not_multimodal")
    messages = [{"role": "assistant", "content": [image_part(data_url(PNG))]},
                {"role": "user", "content": "hi"}]
    refused(chat(vision, messages), param="messages[0].content[0].type", says="user")
    refused(chat(vision, ask({"type": "image_url", "image_url": {}})),
            param="messages[0].content[1].image_url")
    refused(chat(vision, ask({"type": "image_url", "image_url": {"url": data_url(PNG), "detail": "ultra"}})),
            param="messages[0].content[1].image_url.detail")
    refused(chat(vision, ask(image_part("ftp://example.com/cat.png"))), says="scheme")
    # Text that looks like a marker stays text.
    reply = ok(chat(vision, ask(text="<__media__> <hearth-image-0-0> <__hearth_media_1__>")))
    assert reply["usage"]["prompt_tokens"] < TOKENS_PER_IMAGE + 40


def test_shared_memory_and_inline_transfer_give_the_same_tokens(vision, inline_vision):
    messages = ask(image_part(data_url(encoded("JPEG", color=(9, 99, 199)), "image/jpeg")))
    shared = ok(chat(vision, messages, max_tokens=16))
    inline = ok(chat(inline_vision, messages, max_tokens=16))
    assert shared["choices"][0]["message"] == inline["choices"][0]["message"]
    assert shared["usage"]["prompt_tokens"] == inline["usage"]["prompt_tokens"]


def test_text_streams_beside_images_write_what_they_write_alone(vision):
    texts = [ask(text=f"Count to {n}.") for n in range(3, 7)]
    alone = [ok(chat(vision, m, max_tokens=24))["choices"][0]["message"]["content"] for m in texts]
    with_images = [ask(image_part(data_url(encoded("PNG", color=(c, 0, 0))))) for c in (10, 20)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        text_jobs = [pool.submit(chat, vision, m, max_tokens=24) for m in texts]
        image_jobs = [pool.submit(chat, vision, m) for m in with_images]
        together = [ok(j.result())["choices"][0]["message"]["content"] for j in text_jobs]
        for job in image_jobs:
            ok(job.result())
    assert together == alone


def test_models_list_capabilities_and_other_apis_carry_images(vision):
    cards = {m["id"]: m for m in httpx.get(f"{vision.base_url}/models").json()["data"]}
    assert "vision" in cards["smol"]["capabilities"]
    assert "vision" not in cards["plain"]["capabilities"]
    # Loaded on the CPU: no layer on a GPU, none of its memory taken.
    assert cards["smol"]["placement"] == {"gpu_layers": 0, "layers": 30, "vram_bytes": 0}
    b64 = base64.b64encode(PNG).decode()
    anthropic = httpx.post(f"{vision.base_url}/messages", timeout=60, json={
        "model": "smol", "max_tokens": 8,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
            {"type": "text", "text": "What is it?"}]}]})
    assert anthropic.status_code == 200, anthropic.text
    assert anthropic.json()["usage"]["input_tokens"] > TOKENS_PER_IMAGE
    responses = httpx.post(f"{vision.base_url}/responses", timeout=60, json={
        "model": "smol", "max_output_tokens": 8,
        "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is it?"},
            {"type": "input_image", "image_url": data_url(PNG)}]}]})
    assert responses.status_code == 200, responses.text
    assert responses.json()["usage"]["input_tokens"] > TOKENS_PER_IMAGE


def test_no_hostile_image_cost_a_worker(vision):
    # Runs last in this module (pytest keeps file order): everything above was refused or
    # served without a worker dying.
    assert restarts(vision) == 0
