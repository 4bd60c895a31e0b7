"""The demo shop in a real browser: Playwright drives Debian's Chromium against the real server and the real
collector on loopback. Nothing is downloaded: the browser is the system's (`.ci/run` installs it, and there a
missing browser fails the test)."""

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pyarrow as pa
from chromium import chromium
from conftest import log_rows, make_settings
from playwright.sync_api import expect, sync_playwright
from serving_support import ServerProcess, family_ranker, free_port

from postmodern.model.bundle import ModelBundle, make_bundle
from postmodern.model.dataset import Vocabulary
from postmodern.model.families import ranker_from_state
from postmodern.serving.registry import publish

SKUS = [f"sku-{number:03d}" for number in range(1, 41)]
CLICKED = ["sku-005", "sku-006", "sku-007"]
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]  # root in containers and CI


def publish_demo_bundle(registry: Path) -> None:
    products = pa.table(
        {
            "product_sku": SKUS,
            "top_category": [str(number % 4 + 1) for number in range(len(SKUS))],
            "price_bucket": [str(number % 10 + 1) for number in range(len(SKUS))],
        }
    )
    ranker = family_ranker("blend", SKUS)
    publish(make_bundle(ranker, Vocabulary(SKUS), {"model_version": "demo-1"}, products=products), registry)


def recommendations(page) -> list[str]:
    return page.locator("#recommendations li").evaluate_all("items => items.map(item => item.dataset.sku)")


def test_a_shopper_clicks_through_the_demo_and_the_clicks_reach_the_raw_log_in_order(tmp_path):
    settings = make_settings(tmp_path, collect_dir=tmp_path / "stage")
    registry = tmp_path / "registry"
    publish_demo_bundle(registry)
    env = {
        **os.environ,
        "DUCKDB_PATH": str(settings.duckdb_path),
        "DATA_DIR": str(tmp_path),
        "COLLECT_DIR": str(settings.collect_dir),
        "COLLECT_FLUSH_SECONDS": "0.3",
        "REGISTRY_DIR": str(registry),
        "SERVING_API_KEY": "",
    }
    collector = ServerProcess(tmp_path, env, command="collect")
    server = ServerProcess(tmp_path, {**env, "DEMO_COLLECTOR_URL": collector.base_url})
    errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.base_url}/demo")
            expect(page.locator("#model")).to_contain_text("model demo-1 (blend), 40 products")
            expect(page.locator("#recording")).to_contain_text("Clicks are recorded")
            assert page.locator("article.product").count() == 40 and page.locator("h3").count() == 4
            expect(page.locator("#key-box")).to_be_hidden()  # the server asks for no API key

            ranked = []
            for number, sku in enumerate(CLICKED, start=1):
                before = recommendations(page)
                page.locator(f'article[data-sku="{sku}"] .view').click()
                expect(page.locator("#session li")).to_have_count(number)
                expect(page.locator("#answer")).to_have_attribute("data-version", "demo-1")
                page.wait_for_function(
                    "before => JSON.stringify([...document.querySelectorAll('#recommendations li')]"
                    ".map(item => item.dataset.sku)) !== before",
                    arg=str(before).replace("'", '"').replace(", ", ","),
                )
                ranked.append(recommendations(page))
                expect(page.locator("#answer")).to_contain_text("Model demo-1 (blend) answered in")
            assert len({tuple(ranking) for ranking in ranked}) == 3 and all(len(r) == 10 for r in ranked)
            assert page.locator("#recommendations .score").first.inner_text().endswith("%")

            page.locator('article[data-sku="sku-007"] .add').click()
            expect(page.locator("#session li").last).to_contain_text("sku-007 added to cart")
            expect(page.locator("#recording")).to_contain_text("4 event(s) of this session sent")

            page.locator("#compare").click()
            names = page.locator("#compare-grid .ranking h3")
            expect(names).to_have_text(["served: blend", "lstm", "cooccurrence", "popularity"])
            assert page.locator("#compare-grid .ranking").first.locator("li").count() == 10

            page.get_by_label("Search SKUs or categories").fill("sku-01")
            expect(page.locator("article.product")).to_have_count(10)
            page.get_by_label("Search SKUs or categories").fill("")
            screenshots = [tmp_path / "demo-desktop.png", tmp_path / "demo-phone.png"]
            page.screenshot(path=screenshots[0], full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.evaluate("window.scrollTo(0, 0)")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
            page.screenshot(path=screenshots[1], full_page=False)
            browser.close()
        if os.environ.get("POSTMODERN_SCREENSHOTS"):  # the README's pictures: `make screenshots`
            for screenshot in screenshots:
                shutil.copy(screenshot, Path(os.environ["POSTMODERN_SCREENSHOTS"]) / screenshot.name)
        assert errors == []
        deadline = time.monotonic() + 30
        while httpx.get(f"{collector.base_url}/ping").json()["staged_events"]:
            assert time.monotonic() < deadline, "the clicks were not loaded in time"
            time.sleep(0.2)
    finally:
        server.stop()
        collector.stop()
    events = sorted(
        (json.loads(row["raw_data"]) for row in log_rows(settings)),
        key=lambda event: event["server_timestamp_epoch_ms"],
    )
    assert [(event["product_sku_hash"], event["product_action"]) for event in events] == [
        ("sku-005", "detail"),
        ("sku-006", "detail"),
        ("sku-007", "detail"),
        ("sku-007", "add"),
    ]
    assert len({event["session_id_hash"] for event in events}) == 1


def test_without_a_collector_the_page_says_clicks_are_not_recorded_and_still_recommends(tmp_path):
    registry = tmp_path / "registry"
    publish_demo_bundle(registry)
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "REGISTRY_DIR": str(registry), "SERVING_API_KEY": "", "DEMO_COLLECTOR_URL": nowhere}
    server = ServerProcess(tmp_path, env)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=BROWSER_ARGS)
            page = browser.new_page()
            page.goto(f"{server.base_url}/demo")
            expect(page.locator("#recording")).to_contain_text(
                f"Events are not recorded: no collector answers at {nowhere}"
            )
            page.locator('article[data-sku="sku-001"] .view').click()
            expect(page.locator("#answer")).to_have_attribute("data-version", "demo-1")
            expect(page.locator("#recommendations li")).to_have_count(10)
            browser.close()
    finally:
        server.stop()


def test_the_demo_routes_check_their_input_and_work_without_a_catalogue(tmp_path):
    """A bundle without catalog.json (an older one) shows its popular products; /demo/compare takes the limits
    of /invocations and ranks one session by the served model, the bundle's companion baselines and popularity."""
    from fastapi.testclient import TestClient
    from serving_support import small_bundle

    from postmodern.serving.app import ServingConfig, create_app

    bundle = small_bundle("plain-1", SKUS)
    served = ModelBundle.load(bundle.save(tmp_path / "plain")).model
    with_companion = make_bundle(
        ranker_from_state(served),
        Vocabulary(SKUS),
        bundle.metadata,
        companions={"cooccurrence": family_ranker("cooccurrence", SKUS)},
    )
    directory = with_companion.save(tmp_path / "bundle")
    assert not (directory / "catalog.json").exists() and (directory / "companions" / "cooccurrence").is_dir()
    assert ModelBundle.load(directory).companions["cooccurrence"].family == "cooccurrence"
    with TestClient(create_app(directory, ServingConfig(max_k=20, max_session_length=3))) as client:
        assert client.get("/demo").headers["content-type"].startswith("text/html")
        assert "demo.js" in client.get("/demo").text and client.get("/demo/static/demo.js").status_code == 200
        shop = client.get("/demo/catalog").json()
        assert shop["model_family"] == "lstm" and shop["products"][0] == {
            "sku": SKUS[-1],  # the most popular first
            "category": None,
            "price_bucket": None,
        }
        compared = client.post("/demo/compare", json={"session": ["sku-001", "nope"], "k": 5}).json()
        assert [ranking["name"] for ranking in compared["rankings"]] == ["served: lstm", "cooccurrence", "popularity"]
        assert all(len(ranking["recommendations"]) == 5 for ranking in compared["rankings"])
        assert compared["rankings"][2]["recommendations"][0]["sku"] == SKUS[-1]
        # co-occurrence learned the walk sku-001 -> sku-002 of its sessions
        assert compared["rankings"][1]["recommendations"][0]["sku"] == "sku-002"
        for bad in ({"session": ["a"] * 4}, {"session": ["a"], "k": 21}, {"session": "a"}):
            assert client.post("/demo/compare", json=bad).status_code == 422
