"""Drives the start form and the broadcast view in headless Chromium: upload a CSV file as a
test start, see the started runs, follow them in the broadcast view until every message is
delivered; start again from a recent event; open a fan-out's broadcast from its run.
Usage: broadcast.py ADMIN_URL TOKEN DIR CSV_FILE PARENT_RUN"""

import sys
import time

from playwright.sync_api import sync_playwright

from journal import FLAGS


def until_delivered(page, n: int) -> None:
    deadline = time.time() + 60
    while True:
        rows = page.locator("tr.member")
        done = page.locator("tr.member .message[data-status=delivered]")
        if rows.count() == n and done.count() == n:
            return
        assert time.time() < deadline, page.content()
        time.sleep(0.2)
        page.reload()


def main(admin: str, token: str, shots: str, csv_file: str, parent: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_context(locale="en-US").new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{admin}/ui/login?next=/ui/scenarios")
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url("**/ui/scenarios")

        # A CSV upload, marked as a test: one run per row.
        form = page.locator("tr[data-start=greet]")
        form.locator("summary").click()
        form.locator("input.start-csv").set_input_files(csv_file)
        form.locator("input.start-test").check()
        page.screenshot(path=f"{shots}/start-form.png", full_page=True)
        form.locator("button.start-go").click()
        page.wait_for_selector("#started")
        assert page.locator("tr.started-item[data-started=yes]").count() == 3, page.content()
        assert page.locator(".test-run").count() == 1
        page.screenshot(path=f"{shots}/started.png", full_page=True)

        # The broadcast view: one row per recipient with its message's statuses.
        page.click("#to-broadcast")
        page.wait_for_selector("#broadcast")
        until_delivered(page, 3)
        assert "+48100" in page.inner_text("#broadcast")
        page.screenshot(path=f"{shots}/broadcast.png", full_page=True)

        # The runs list marks test starts.
        page.goto(f"{admin}/ui/runs?scenario=greet")
        assert page.locator("tr.run .test-run").count() == 3, page.content()

        # Start again from a recent event, not as a test.
        page.goto(f"{admin}/ui/scenarios")
        form = page.locator("tr[data-start=greet]")
        form.locator("summary").click()
        form.locator("select.start-recent").select_option(index=1)
        assert "phone" in form.locator("textarea.start-json").input_value()
        form.locator("button.start-go").click()
        page.wait_for_selector("#started")
        assert page.locator("tr.started-item[data-started=yes]").count() == 1
        assert page.locator(".test-run").count() == 0

        # A bad row is refused with its line, and nothing starts.
        page.goto(f"{admin}/ui/scenarios")
        form = page.locator("tr[data-start=greet]")
        form.locator("summary").click()
        form.locator("input.start-csv").set_input_files(
            files=[{"name": "bad.csv", "mimeType": "text/csv", "buffer": b"name,phone\nAda\n"}])
        form.locator("button.start-go").click()
        page.wait_for_load_state()
        assert "CSV line 2" in page.content(), page.content()

        # A fan-out's broadcast, from the calling run's page.
        page.goto(f"{admin}/ui/runs/{parent}")
        page.click("#broadcast")
        page.wait_for_selector("#broadcast-total")
        until_delivered(page, 4)
        page.screenshot(path=f"{shots}/fan-out.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
    print("broadcast pages: ok")
