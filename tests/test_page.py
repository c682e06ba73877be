"""The page to try an agent (GET /), in a real headless Chromium (Debian's, driven by Playwright)
against a real `mmagent serve` on loopback with a tiny text + image + audio + number model and an
API key: the key prompt, a wrong key, the form built from /v1/schema, uploads and recording, the
decision with its probability bars, the explanation (heatmap, word scores), and API errors shown
next to the field they name. `make test` installs chromium (`make browser`), so nothing skips."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mmagent.demo.toy import tiny_config, write_toy_table
from tests.test_serving import _free_port, _stop, _wait_ready

pytestmark = pytest.mark.slow  # a model, a server and a browser: about a minute on two shared cores

KEY = "page-test-key-0123456789"
TIMEOUT_MS = 60_000  # two shared CPU cores: the first model call may take a while


def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download cannot work offline)."""
    path = os.environ.get("MMAGENT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(f"chromium not found at {path}: run `make browser` (apt-get install chromium) or set MMAGENT_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mmagent.config import config_from_dict
    from mmagent.workflow import train

    folder = tmp_path_factory.mktemp("page")
    train_csv = write_toy_table(folder, 48, 0, "train.csv")
    run_dir = folder / "run"
    train(config_from_dict(tiny_config(train_csv)), run_dir, progress=False)  # finished: calibration, unknown score, sets
    port = _free_port()
    log_path = folder / "server.log"
    log = open(log_path, "wb")
    env = {**os.environ, "MMAGENT_API_KEYS": KEY, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmagent", "serve", str(run_dir), "--port", str(port), "--max-wait-ms", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        from mmagent.agent import Agent

        agent = Agent.load(run_dir)  # the in-process reference, loaded while the server starts
        _wait_ready(url.rstrip("/"), proc, log_path, timeout=120)
        yield {"url": url, "folder": folder, "agent": agent}
    finally:
        _stop(proc, log)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # root in a container: no sandbox; a fake microphone (a beep) for the recording test
            args=["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(permissions=["microphone"])
    context.add_init_script(CAPTURE)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def enter_key(pg, url: str, key: str) -> None:
    from playwright.sync_api import expect

    pg.goto(url)
    expect(pg.locator("#key-message")).to_contain_text("needs an API key")
    assert pg.locator("#fields [name]").count() == 0  # nothing of the model before a key
    pg.fill("#api-key", key)
    pg.click("#key-form button")


# Keeps a copy of every form the page posts (Playwright does not capture multipart bodies with files).
CAPTURE = """
window.__sent = [];
const fetchFirst = window.fetch;
window.fetch = async (url, options = {}) => {
  if (options.body instanceof FormData) {
    const parts = {};
    for (const [k, v] of options.body.entries()) parts[k] = v instanceof Blob ? Array.from(new Uint8Array(await v.arrayBuffer())) : v;
    window.__sent.push({ url: String(url), parts });
  }
  return fetchFirst(url, options);
};
"""


def sent_form(pg, path: str) -> dict[str, bytes | str]:
    """The fields of the last form the page posted to ``path`` (files as bytes)."""
    sent = [s for s in pg.evaluate("window.__sent") if s["url"].endswith(path)]
    assert sent, f"the page posted nothing to {path}"
    return {k: bytes(v) if isinstance(v, list) else v for k, v in sent[-1]["parts"].items()}


def test_page_decides_and_explains_a_multimodal_record(served: dict, page) -> None:
    from playwright.sync_api import expect

    enter_key(page, served["url"], KEY)
    for column in ("text", "image", "audio", "x"):  # the form comes from /v1/schema
        expect(page.locator(f'[data-field="{column}"] [name="{column}"]')).to_have_count(1)
    assert page.evaluate("sessionStorage.getItem('mmagent-api-key')") == KEY

    folder, text = served["folder"], "the bravo case number 7"
    page.fill('[name="text"]', text)
    page.set_input_files('[name="image"]', str(folder / "img/0_3.png"))
    page.set_input_files('[name="audio"]', str(folder / "wav/0_3.wav"))
    page.fill('[name="x"]', "0.25")
    expect(page.locator('[data-field="image"] img.preview')).to_be_visible()
    page.click("#submit")
    expect(page.locator("#action")).not_to_be_empty()
    parts = sent_form(page, "v1/act")
    assert parts["text"] == text and parts["x"] == "0.25"
    assert parts["image"] == (folder / "img/0_3.png").read_bytes() and parts["audio"] == (folder / "wav/0_3.wav").read_bytes()

    want = served["agent"].act({"text": text, "image": str(folder / "img/0_3.png"), "audio": str(folder / "wav/0_3.wav"), "x": 0.25})
    expect(page.locator("#action")).to_have_text(want.action)
    expect(page.locator("#label")).to_contain_text(want.label)
    expect(page.locator("#escalated")).to_have_text(f"yes: {want.action.replace('_', ' ')}" if want.escalated else "no")
    assert want.unknown_score is not None and want.prediction_set is not None  # a finished run has both
    expect(page.locator("#unknown")).to_contain_text(f"{'yes' if want.unknown else 'no'} (score ")
    expect(page.locator("#prediction-set")).to_have_text(", ".join(want.prediction_set) or "(empty)")
    bars = page.locator("#probabilities .bar")
    expect(bars).to_have_count(len(want.probabilities))
    shown = {bars.nth(i).get_attribute("data-name"): float(bars.nth(i).get_attribute("data-value")) for i in range(bars.count())}
    assert shown == pytest.approx(want.probabilities, abs=1e-4)
    top = bars.first  # sorted: the first bar is the label's, its width is its probability
    assert top.get_attribute("data-name") == want.label
    width = top.locator(".fill").evaluate("e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
    assert width == pytest.approx(want.probabilities[want.label], abs=0.02)
    expect(page.locator("#contributions .bar")).to_have_count(4)

    # The explanation (/v1/explain): the heatmap over the uploaded image, the typed words scored.
    heatmap = page.locator('.explained.image[data-input="image"] img.heatmap')
    expect(heatmap).to_be_visible()
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert heatmap.evaluate("img => img.complete && img.naturalWidth") > 0
    expect(page.locator('.explained.text[data-input="text"] .tokens')).to_have_text(text)
    assert page.locator(".explained.text mark.token").count() >= 4
    assert page.locator(".explained.audio .timeline .slice").count() > 0


def test_wrong_key_says_so_and_shows_nothing(served: dict, page) -> None:
    from playwright.sync_api import expect

    enter_key(page, served["url"], "not-the-key")
    expect(page.locator("#key-message")).to_contain_text("API key refused")
    expect(page.locator("#main")).to_be_hidden()
    assert page.locator("#fields [name]").count() == 0
    assert page.evaluate("sessionStorage.getItem('mmagent-api-key')") is None  # a refused key is not kept


def test_recording_is_sent_as_16_bit_wav_and_errors_name_the_field(served: dict, page) -> None:
    import soundfile as sf
    from playwright.sync_api import expect

    enter_key(page, served["url"], KEY)
    page.click('[data-field="audio"] button.record')  # the fake microphone: a beep
    expect(page.locator('[data-field="audio"] button.record')).to_have_text("■ Stop")
    page.wait_for_timeout(1200)
    page.click('[data-field="audio"] button.record')
    expect(page.locator('[data-field="audio"] .record-status')).to_contain_text("16-bit WAV")
    expect(page.locator('[data-field="audio"] audio.preview')).to_be_visible()

    page.fill('[name="x"]', "1e39")  # over float32: the API answers 422 naming `x`
    page.click("#submit")
    expect(page.locator("#form-error")).to_be_visible()
    wav = sent_form(page, "v1/act")["audio"]
    data, rate = sf.read(io.BytesIO(wav))
    info = sf.info(io.BytesIO(wav))
    assert (rate, info.subtype, info.channels) == (16000, "PCM_16", 1)
    assert 0.8 < len(data) / rate < 3.0 and abs(data).max() > 0.01  # about the time recorded, and not silence
    expect(page.locator('[data-field="x"] .field-error')).to_contain_text("out of range")
    expect(page.locator("#form-error")).to_contain_text("422")
    assert page.locator('[name="x"]').get_attribute("aria-invalid") == "true"

    # Fixed, the same recording goes through; a server without /v1/explain still shows the decision.
    page.route("**/v1/explain", lambda route: route.fulfill(status=404, json={"error": "Not Found", "field": "path"}))
    page.fill('[name="x"]', "0.5")
    page.click("#submit")
    expect(page.locator("#action")).not_to_be_empty()
    expect(page.locator("#explain-status")).to_contain_text("does not explain")
    expect(page.locator("#form-error")).to_be_hidden()


def test_shell_is_static_and_holds_nothing_of_the_model(served: dict) -> None:
    from mmagent.serving.page import ASSETS, HEADERS, asset

    url = served["url"]
    r = httpx.get(url)  # no key: the shell only
    assert r.status_code == 200 and r.content == asset("index.html")  # byte for byte the packaged file: nothing model-specific
    assert r.headers["content-security-policy"] == HEADERS["Content-Security-Policy"]
    for name in ASSETS:
        if name != "index.html":
            got = httpx.get(url + "page/" + name)
            assert got.status_code == 200 and got.content == asset(name), name
    assert httpx.get(url + "v1/schema").status_code == 401  # what the page reads needs the key
    for bad in ("page/index.py", "page/..%2F__init__.py", "page/%2E%2E/app.py"):
        assert httpx.get(url + bad).status_code == 404, bad
