"""The chat page at / in a real headless chromium (selenium + Debian's chromium-driver): a message gets a
streamed answer, model text is shown as text (never parsed as HTML), and Stop ends the answer."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest
from selenium import webdriver

from scratchllm.generation.engine import Engine
from scratchllm.prompts import STYLES
from scratchllm.serving.app import Settings
from tests.serving_helpers import ServerThread, scripted_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    # CI installs them (.ci/run): there a missing browser is a failure, elsewhere a skip with the reason.
    reason = "no chromium + chromedriver on this machine (Debian: apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        raise RuntimeError(f"CI: {reason}")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def prompt_len(tokenizer, message: str) -> int:
    return len(tokenizer.encode(STYLES["plain"].render([{"role": "user", "content": message}])))


def wait_for(condition, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def send(browser, text: str) -> None:
    box = browser.find_element("id", "input")
    box.send_keys(text)
    browser.find_element("id", "send").click()


def test_message_gets_a_streamed_answer_rendered_as_text(browser, gpt2_tokenizer):
    answer = " Hello <b>bold</b> & <script>window.hacked=1</script>"
    script = gpt2_tokenizer.encode(answer) + [50256]
    model = scripted_model(script, prompt_len(gpt2_tokenizer, "Hi"))
    with ServerThread(Engine(model, gpt2_tokenizer, max_batch=2), Settings("page", STYLES["plain"])) as server:
        browser.get(server.url + "/")
        wait_for(lambda: browser.find_element("id", "model").text == "page")  # the page asked /v1/models
        send(browser, "Hi")
        bubble = wait_for(lambda: browser.find_elements("css selector", ".msg.assistant[data-state=done]"))[0]
        assert bubble.text.strip() == answer.strip()
        assert browser.execute_script("return document.querySelector('.msg.assistant').textContent") == answer
        assert browser.execute_script("return document.querySelectorAll('#log b, #log script').length") == 0
        assert browser.execute_script("return window.hacked === undefined")
        assert browser.find_element("css selector", ".msg.user").text == "Hi"


def test_stop_button_ends_the_answer(browser, gpt2_tokenizer):
    cycle = gpt2_tokenizer.encode(" Once upon a time,")
    model = scripted_model(cycle, prompt_len(gpt2_tokenizer, "Tell me"), context=2048, emb_dim=256, repeat=True)
    engine = Engine(model, gpt2_tokenizer, max_batch=2)
    with ServerThread(engine, Settings("page", STYLES["plain"], max_tokens=4096)) as server:
        browser.get(server.url + "/")
        browser.find_element("id", "temperature").clear()
        browser.find_element("id", "temperature").send_keys("0")
        send(browser, "Tell me")
        wait_for(lambda: browser.find_element("css selector", ".msg.assistant").text.count("time") >= 3)
        browser.find_element("id", "stop").click()
        wait_for(lambda: browser.find_elements("css selector", ".msg.assistant[data-state=stopped]"))
        shown = browser.find_element("css selector", ".msg.assistant").text
        # Stopped early: the whole answer would repeat the phrase about 400 times (2,048 positions / 5 tokens).
        assert shown.strip().startswith("Once upon a time, Once upon") and shown.count("time") < 200
        # The server noticed the closed stream: the request left the batch.
        wait_for(lambda: httpx.get(server.url + "/health").json()["running"] == 0, timeout=10)
        assert browser.find_element("id", "send").is_enabled() and not browser.find_element("id", "stop").is_enabled()
        time.sleep(0.3)
        assert browser.find_element("css selector", ".msg.assistant").text == shown  # nothing arrives after Stop
