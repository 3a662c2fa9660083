"""The playground and the API docs in a real headless browser (Debian's chromium, driven by
Playwright) whose network is limited to loopback: the pages must work with no internet.

Screenshots go to ``$CI_ARTIFACTS/browser`` when set, else to the test's tmp dir; the folder is
printed (``pytest -s`` or the captured output of a failure shows it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.conftest import free_port, start_server, stop_server

ASSETS = Path(__file__).parent.parent / "assets"
PHOTO = ASSETS / "chelsea.jpg"
RUN_TIMEOUT_MS = 180_000
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
KEY = "k-browser-0c4d9e"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium from the system package (``playwright install`` is never run)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(
            "Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)"
        )
    with sync_playwright() as playwright:
        # Belt and braces: every name but loopback fails to resolve in the browser itself.
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    base = os.environ.get("CI_ARTIFACTS")
    folder = Path(base) / "browser" if base else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {folder}")  # with $CI_ARTIFACTS, also listed at the end
    return folder


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page whose requests to anything but loopback are aborted, and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    external: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK or url.startswith("data:"):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    context.route("**/*", only_loopback)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert not external, f"the page tried to reach the network: {external}"
    assert not errors, f"script errors: {errors}"


def shown_json(page: Page) -> dict:
    page.wait_for_selector("#json[data-state='result']", timeout=RUN_TIMEOUT_MS)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    return json.loads(page.locator("#json").inner_text())


def offers_visualize(base: str, model_type: str) -> bool:
    schema = httpx.get(f"{base}/schema/openapi.json", timeout=30).json()
    body = schema["paths"][f"/inference/{model_type}"]["post"]["requestBody"]
    wrapped = body["content"]["application/json"]["schema"]  # {"allOf": [{"$ref": ...}]}
    ref = wrapped.get("$ref") or wrapped["allOf"][0]["$ref"]
    return "visualize" in schema["components"]["schemas"][ref.split("/")[-1]]["properties"]


def assert_visualized(page: Page, base: str, model_type: str) -> None:
    if not offers_visualize(base, model_type):
        assert page.locator("img.visualization").count() == 0
        return
    image = page.locator("img.visualization").first
    image.wait_for(timeout=10_000)
    width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width >= 100, "the visualization did not decode as an image"


def choose(page: Page, model_type: str) -> None:
    page.select_option("#model", model_type)
    assert page.locator("#variant option").count() >= 1


def test_playground_runs_sam3_and_depth_and_a_job_offline(
    live_server: str, page: Page, screenshots: Path
) -> None:
    page.goto(f"{live_server}/playground")
    page.wait_for_selector("body[data-ready='true']")
    assert page.locator("#auth-fields").is_hidden()  # no keys configured on this server
    options = [o.get_attribute("value") for o in page.locator("#model option").all()]
    assert {"sam3", "depth-anything"} <= set(options)
    page.set_input_files("#file", PHOTO)
    page.wait_for_selector("#preview:not([hidden])")

    # SAM3: prompts and thresholds, run now.
    choose(page, "sam3")
    assert page.locator("#prompts-field").is_visible()
    page.fill("#prompts", "cat, ear")
    page.fill("input[name='threshold']", "0")  # tiny random weights: keep every instance
    page.click("#run")
    result = shown_json(page)
    assert result["model_type"] == "sam3"
    assert len(result["results"]) == 1
    assert_visualized(page, live_server, "sam3")
    page.screenshot(path=screenshots / "playground-sam3.png", full_page=True)

    # Depth: no prompts; run now.
    choose(page, "depth-anything")
    assert page.locator("#prompts-field").is_hidden()
    page.click("#run")
    result = shown_json(page)
    assert result["model_type"] == "depth-anything"
    assert len(result["results"]) == 1
    assert_visualized(page, live_server, "depth-anything")
    page.screenshot(path=screenshots / "playground-depth.png", full_page=True)

    # The same depth request as an async job: submitted, polled, its result shown.
    page.click("#submit-job")
    result = shown_json(page)
    assert result["model_type"] == "depth-anything"
    assert_visualized(page, live_server, "depth-anything")
    page.screenshot(path=screenshots / "playground-depth-job.png", full_page=True)


def test_playground_shows_the_error_detail(live_server: str, page: Page, screenshots: Path) -> None:
    page.goto(f"{live_server}/playground")
    page.wait_for_selector("body[data-ready='true']")
    page.set_input_files("#file", PHOTO)
    page.wait_for_selector("#preview:not([hidden])")
    choose(page, "sam3")
    page.fill("#prompts", "")  # SAM3 needs at least one prompt: the server says so
    page.click("#run")
    page.wait_for_selector("#json[data-state='error']", timeout=RUN_TIMEOUT_MS)
    error = page.locator("#error")
    assert error.is_visible()
    assert error.inner_text().startswith("400: ")
    assert "prompts" in error.inner_text()
    page.screenshot(path=screenshots / "playground-error.png", full_page=True)


def test_docs_list_the_operations_offline(live_server: str, page: Page, screenshots: Path) -> None:
    page.goto(f"{live_server}/docs")
    page.wait_for_selector(".opblock", timeout=60_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    listed = {p.replace("\u200b", "").strip() for p in paths}
    assert {"/inference/sam3", "/inference/depth-anything", "/jobs/submit/{model_type}"} <= listed
    page.screenshot(path=screenshots / "docs-swagger.png", full_page=False)

    page.goto(f"{live_server}/redoc")
    page.get_by_text("/inference/sam3").first.wait_for(timeout=60_000)
    page.screenshot(path=screenshots / "docs-redoc.png", full_page=False)


@pytest.fixture(scope="module")
def keyed_server(tiny_config: Path) -> Iterator[str]:
    """``vision-api serve`` on the tiny models with one API key."""
    port = free_port()
    env = {"VISION_API_REDIS_URL": "", "VISION_API_API_KEYS": KEY}
    proc = start_server(["serve", "--config", str(tiny_config), "--port", str(port)], env, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def test_playground_asks_for_the_key_when_keys_are_set(
    keyed_server: str, page: Page, screenshots: Path
) -> None:
    page.goto(f"{keyed_server}/playground")  # the page itself is open
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#auth-fields").is_visible()
    assert page.locator("#error").inner_text().startswith("401: ")
    page.screenshot(path=screenshots / "playground-key-missing.png", full_page=True)
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")  # change: the page reloads the models with the key
    page.wait_for_selector("body[data-ready='true']")
    assert page.locator("#error").is_hidden()
    options = [o.get_attribute("value") for o in page.locator("#model option").all()]
    assert "depth-anything" in options
