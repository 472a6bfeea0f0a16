"""Drives the journal pages in headless Chromium: sign in, filter the runs, open the failed
run, press retry, see it succeed. Saves screenshots. Usage: journal.py ADMIN_URL TOKEN DIR"""

import sys
import time

from playwright.sync_api import sync_playwright

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def main(admin: str, token: str, shots: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        context = browser.new_context(locale="en-US")
        page = context.new_page()
        page.set_default_timeout(15_000)

        # Not signed in: the pages send us to the sign-in form first.
        page.goto(f"{admin}/ui/runs")
        assert "/ui/login" in page.url, page.url
        page.fill("#token", "wrong")
        page.click("#login")
        assert page.locator(".err").inner_text() == "Wrong token."
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url("**/ui/runs")
        assert page.locator("tr.run").count() == 3, page.content()
        page.screenshot(path=f"{shots}/runs.png", full_page=True)

        # Filter to the failed run and open it.
        page.select_option("#f-status", "failed")
        page.click("#f-go")
        page.wait_for_url("**status=failed**")
        rows = page.locator("tr.run")
        assert rows.count() == 1, page.content()
        assert rows.first.get_attribute("data-status") == "failed"
        page.screenshot(path=f"{shots}/runs-failed.png", full_page=True)
        rows.first.locator("a.run-link").click()
        page.wait_for_selector("#run-status")
        assert page.inner_text("#run-status") == "failed"
        assert page.locator("#timeline .step.error").count() >= 1
        assert "503" in page.inner_text("#run-error")
        # The "why" of a step is there to expand; the secret header is not.
        assert "sk-live-123" not in page.content()
        page.screenshot(path=f"{shots}/run-failed.png", full_page=True)

        # Retry: the receiving end works again, so the run completes.
        page.click("#retry")
        page.wait_for_selector("#notice")
        deadline = time.time() + 15
        while page.inner_text("#run-status") != "done":
            assert time.time() < deadline, "the retried run did not complete"
            time.sleep(0.2)
            page.reload()
        assert page.locator("#timeline .step.ok").count() >= 2
        page.screenshot(path=f"{shots}/run-retried.png", full_page=True)

        # The scenario's graph with the way this run took: its steps filled green, the
        # edges it took drawn bold, what a step saw on hover.
        graph = page.locator("#graph svg")
        assert graph.count() == 1, page.content()
        svg = page.inner_html("#graph")
        assert svg.count("#b7e4c7") >= 2, svg
        assert 'stroke-width="3"' in svg, svg
        assert "<title>http: " in svg, svg
        page.locator("#graph").screenshot(path=f"{shots}/run-graph.png")

        # The scenario's graph counts its runs on each edge: all three went from the trigger
        # to the first step.
        page.goto(f"{admin}/ui/scenarios/push/graph?days=1")
        assert "3 runs" in page.inner_text("#graph-runs"), page.content()
        assert "×3" in page.inner_html("#graph"), page.inner_html("#graph")
        page.locator("#graph").screenshot(path=f"{shots}/scenario-graph.png")

        page.goto(f"{admin}/ui/scenarios")
        assert page.locator("tr[data-scenario=push]").count() == 1
        page.screenshot(path=f"{shots}/scenarios.png", full_page=True)

        # The same pages in Russian.
        ru = browser.new_context(locale="ru-RU", extra_http_headers={"Accept-Language": "ru"})
        # The session, not the token, is what the cookie carries.
        session = [c["value"] for c in context.cookies() if c["name"] == "switchboard_admin"][0]
        assert session != token
        ru.add_cookies([{"name": "switchboard_admin", "value": session, "url": admin}])
        rpage = ru.new_page()
        rpage.goto(f"{admin}/ui/runs")
        assert "Запуски" in rpage.content()
        rpage.screenshot(path=f"{shots}/runs-ru.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    print("journal pages: ok")
