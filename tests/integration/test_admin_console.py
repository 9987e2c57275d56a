"""The web console in a real browser (Debian's chromium driven by Playwright; nothing downloads a browser).

One browser session walks every page. KAIROS_UPDATE_SCREENSHOTS=1 writes the screenshots to docs/images/.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from admin_support import ADMIN_TOKEN, start_admin_gateway
from tests.conftest import REPO_ROOT
from ops_helpers import config, route

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")


def test_console_pages_in_chromium(gateway, make_upstream, tmp_path):
    a, b = make_upstream(2)
    gw = start_admin_gateway(gateway, config(route(a, name="users"), route(a, name="orders", external="/orders/{id}")))
    shots = REPO_ROOT / "docs" / "images" if os.environ.get("KAIROS_UPDATE_SCREENSHOTS") else tmp_path
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=5) as c:
            i = 0
            while not stop.is_set():
                c.get(f"/api/{i}")
                if i % 3 == 0:
                    c.get(f"/orders/{i}")
                i += 1
                time.sleep(0.02)

    def upstream_of(path: str) -> str:
        return httpx.get(gw.url + path, trust_env=False, timeout=5).headers["x-upstream"]

    problems: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            page.goto(gw.admin_url + "/admin/ui/")
            page.get_by_label("Admin or viewer token").fill("not-the-token-at-all")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text("That token was refused.").wait_for()
            page.get_by_label("Admin or viewer token").fill(ADMIN_TOKEN)
            page.keyboard.press("Enter")  # keyboard submits
            page.get_by_text("ops (admin)").wait_for()
            problems.clear()  # the refused token above logged its 401

            # Dashboard: numbers and charts move under traffic.
            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            page.wait_for_function(
                "() => { const c = document.querySelector('tr[data-route=users] td.rps');"
                " return c && parseFloat(c.textContent) > 0; }", timeout=15000)
            page.wait_for_function("() => document.querySelectorAll('#dash-backends li').length == 1")
            if shots != tmp_path:
                time.sleep(10)  # a few seconds of chart for the picture
            page.screenshot(path=str(shots / "admin-dashboard.png"))

            # Routes: an invalid edit shows its problem inline, with the JSON path; a valid one routes differently.
            page.get_by_role("link", name="Routes").click()
            page.get_by_role("button", name="Edit users").click()
            page.get_by_label("External path").fill("/api/{id")
            page.locator("#preview li", has_text="routers[0].external_path").wait_for()
            page.screenshot(path=str(shots / "admin-route-editor.png"), full_page=True)
            page.get_by_label("External path").fill("/api/{id}")
            page.get_by_role("textbox", name="Backends").fill(f"http://127.0.0.1:{b.port}")
            page.get_by_text("Valid: ready to save.").wait_for()
            page.get_by_role("button", name="Save").click()
            page.get_by_text("Saved: version 2").wait_for()
            assert upstream_of("/api/1") == b.name
            page.get_by_label("Search routes").fill("orders")
            assert page.locator("#routes-table tbody tr").count() == 1
            page.screenshot(path=str(shots / "admin-routes.png"))

            # Conflict: the config changes behind the open editor; saving is refused, nothing changes.
            page.get_by_role("button", name="Edit orders").click()
            with httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                              trust_env=False) as api:
                current = api.get("/admin/config")
                assert api.put("/admin/config", json={**current.json(), "timeout_ms": 29000},
                               headers={"if-match": current.headers["etag"]}).status_code == 200
            page.get_by_role("textbox", name="Backends").fill(f"http://127.0.0.1:{b.port}")
            page.get_by_role("button", name="Save").click()
            page.get_by_text("Conflict: the config changed since you opened the editor").wait_for()
            assert upstream_of("/orders/1") == a.name
            problems.remove("Failed to load resource: the server responded with a status of 412 (Precondition Failed)")
            page.get_by_role("button", name="Cancel").click()

            # Delete asks first; "Cancel" keeps the route.
            page.get_by_role("button", name="Delete orders").click()
            page.locator("#confirm").get_by_role("button", name="Cancel").click()
            assert page.locator("#routes-table tbody tr[data-route=orders]").count() == 1

            # Backends: drain and undrain.
            page.get_by_role("link", name="Backends").click()
            page.get_by_role("button", name=f"drain http://127.0.0.1:{b.port}").click()
            page.locator(f"tr[data-backend='http://127.0.0.1:{b.port}'] .badge", has_text="drained").wait_for()
            page.screenshot(path=str(shots / "admin-backends.png"))
            page.get_by_role("button", name=f"undrain http://127.0.0.1:{b.port}").click()
            page.locator(f"tr[data-backend='http://127.0.0.1:{b.port}'] .badge", has_text="healthy").wait_for()

            # Match tester.
            page.get_by_role("link", name="Match").click()
            page.get_by_label("URL").fill("/orders/7?x=1")
            page.get_by_role("button", name="Match").click()
            page.get_by_text("/echo/7?x=1").wait_for()
            page.screenshot(path=str(shots / "admin-match.png"))

            # History: the diff of version 1 against now, then roll back to it.
            page.get_by_role("link", name="History").click()
            page.locator("button[data-version='1']").click()
            page.locator("#diff .del").first.wait_for()
            page.screenshot(path=str(shots / "admin-history.png"))
            page.get_by_role("button", name="Roll back to version 1").click()
            page.get_by_role("button", name="Yes").click()
            page.get_by_text("Rolled back to version 1").wait_for()
            assert upstream_of("/api/1") == a.name

            # A phone-sized viewport: no sideways scrolling of the page itself.
            page.set_viewport_size({"width": 390, "height": 844})
            page.get_by_role("link", name="Dashboard").click()
            page.locator("tr[data-route=users]").wait_for()
            assert page.evaluate("document.documentElement.scrollWidth") <= 392
            page.screenshot(path=str(shots / "admin-phone.png"), full_page=True)
            for name in ("Routes", "Backends", "Match", "History"):
                page.get_by_role("link", name=name).click()
                page.locator(f"#page-{name.lower()}").wait_for()
                assert page.evaluate("document.documentElement.scrollWidth") <= 392, name
        finally:
            stop.set()
            browser.close()
    assert not problems, problems  # no script errors, no CSP violations
