"""Each party's everyday work in the console, in a real browser."""

import re
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

import veil_client

from conftest import QUESTION


def test_the_console_is_served_with_a_strict_content_security_policy(world):
    with urllib.request.urlopen(world.url + "/console/") as page:
        csp = page.headers["Content-Security-Policy"]
        html = page.read().decode()
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert re.search(r"<script[^>]*>\s*[^<\s]", html) is None, "inline script"
    with urllib.request.urlopen(world.url + "/") as root:
        assert root.url.endswith("/console/")


def test_a_bad_token_is_refused_at_its_field(console, world):
    console.driver.get(world.url + "/console/")
    field = console.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]")))
    field.send_keys("veil_wrong\n")
    assert "not valid" in console.text("#token-error")
    assert field.get_attribute("aria-invalid") == "true"


def test_the_holder_approves_a_job_from_the_queue(console, world):
    job = world.analyst.client.submit_sql(QUESTION, dataset=world.dataset, epsilon=0.25)
    console.sign_in(world.holder)
    card = console.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"article[data-job='{job.id}']")))
    assert "SELECT region, COUNT(*)" in card.find_element(By.CSS_SELECTOR, "pre.manifest").text
    assert "analyst" in card.text and "0.25" in card.text
    # The analyst has 4 - 0.5 left before this job: 3.25 after it.
    assert "3.25" in card.text
    console.screenshot("holder")
    console.click(f"Approve {job.id}")
    assert "approved" in console.text(f"article[data-job='{job.id}'] .decided")
    assert world.analyst.client.wait(job.id, timeout=120, progress=False).state is veil_client.JobState.RELEASED


def test_a_policy_error_is_shown_at_the_field_and_changes_nothing(console, world):
    before = len(world.holder.client.policy_versions(world.dataset))
    console.sign_in(world.holder)
    console.open("Policy")
    editor = console.driver.find_element(By.CSS_SELECTOR, "#main textarea")
    editor.clear()
    editor.send_keys('privacy_unit = "person_id"\nconsumers = ["analyst"]\n')
    console.click("Save as a new version")
    message = console.text("#policy-error")
    assert "missing field" in message
    assert editor.get_attribute("aria-invalid") == "true"
    after = world.holder.client.policy_versions(world.dataset)
    assert len(after) == before
    assert "Version 1" in console.driver.find_element(By.ID, "main").text


def test_the_consumer_sees_the_release_with_its_intervals(console, world):
    console.sign_in(world.analyst)
    console.click(f"View {world.released}")
    table = console.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".release-table table")))
    headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "th")]
    assert headers[:5] == ["region", "people", "people_noise_scale", "people_ci95_low", "people_ci95_high"]
    assert "income_mean_ci95_low" in headers
    release = world.analyst.client.result(world.released)
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == len(release.rows) == 3
    for row, released in zip(rows, release.records()):
        cells = [td.text for td in row.find_elements(By.CSS_SELECTOR, "td")]
        assert cells[0] == released["region"]
        low, value, high = (float(c.replace(",", "")) for c in (cells[3], cells[1], cells[4]))
        assert low <= value <= high
        assert value == pytest.approx(released["people"], abs=1e-3)
    charts = console.driver.find_elements(By.CSS_SELECTOR, ".charts svg")
    assert len(charts) >= 2  # the count and the mean, each with its error bars
    for chart in charts:
        assert len(chart.find_elements(By.CSS_SELECTOR, "circle.point")) == 3
        assert len(chart.find_elements(By.CSS_SELECTOR, "line.bar")) == 9  # a bar and two ends per group
    console.screenshot("consumer")


def test_the_consumer_checks_the_cost_before_spending(console, world):
    spent = [b.spent for b in world.analyst.client.budget()]
    console.sign_in(world.analyst)
    console.open("Ask")
    console.click("Check the cost (spends nothing)")
    forecast = console.text("#forecast")
    assert "count of people" in forecast and "noise scale" in forecast and "±" in forecast
    assert [b.spent for b in world.analyst.client.budget()] == spent


def test_the_reviewer_verifies_the_checkpoint_in_the_browser(console, world):
    console.sign_in(world.reviewer)
    console.click("Verify this checkpoint")
    verdict = console.text("#verdict")
    assert verdict.startswith("✔") and "verified in this browser" in verdict
    console.screenshot("reviewer")
    note = console.driver.find_element(By.XPATH, "//label[normalize-space()='Signed checkpoint (C2SP signed note)']/following-sibling::textarea[1]")
    original = note.get_attribute("value")
    lines = original.split("\n")
    tampered_size = "\n".join([lines[0], str(int(lines[1]) + 1)] + lines[2:])
    for forged in (tampered_size, original.replace(lines[2], lines[2][::-1])):
        console.driver.execute_script("arguments[0].value = arguments[1]", note, forged)
        console.click("Verify this checkpoint")
        console.wait.until(lambda d: "rejected" in d.find_element(By.ID, "verdict").text)
        assert console.text("#verdict").startswith("✘")
    # The genuine note verifies again, and a later one extends it.
    console.driver.execute_script("arguments[0].value = arguments[1]", note, original)
    console.click("Verify this checkpoint")
    console.wait.until(lambda d: d.find_element(By.ID, "verdict").text.startswith("✔"))
    world.analyst.client.check({"dataset": world.dataset, "sql": QUESTION, "epsilon": 0.1})  # logs an entry
    console.click("Fetch a fresh checkpoint and verify it")
    console.wait.until(lambda d: "extends" in d.find_element(By.ID, "checkpoint-outcome").text)


def test_the_reviewer_explores_the_log_and_the_spending(console, world):
    console.sign_in(world.reviewer)
    console.open("Audit log")
    console.driver.find_element(By.XPATH, "//label[normalize-space()='consumer']/following-sibling::input[1]").send_keys("analyst")
    console.click("Filter")
    results = console.wait.until(lambda d: d.find_element(By.ID, "log-results").text)
    assert world.released in results and "release_created" in results
    console.click("Entry 0") if "Entry 0" in results else None
    console.open("Spending")
    main = console.driver.find_element(By.ID, "main").text
    assert "analyst" in main and world.dataset in main


def test_a_consumer_never_sees_another_consumers_job(console, world):
    other = world.rival.client.submit_sql(QUESTION, dataset=world.dataset, epsilon=0.1)
    console.sign_in(world.analyst)
    for section in ("Results", "Ask", "Catalog", "Budget"):
        console.open(section)
        assert other.id not in console.driver.page_source, section
    traffic = console.api_traffic()
    assert traffic, "the page made API calls"
    for url, body in traffic:
        assert other.id not in url and other.id not in body, url


def test_every_control_has_a_label_and_the_page_breaks_no_policy(console, world):
    for party, sections in ((world.holder, ("Approval queue", "Datasets", "Policy", "Jobs and logs", "Budgets")),
                            (world.analyst, ("Results", "Ask", "Catalog", "Budget")),
                            (world.reviewer, ("Checkpoint", "Audit log", "Spending", "Refusals and anomalies"))):
        console.sign_in(party)
        for section in sections:
            console.open(section)
            unlabelled = console.driver.execute_script("""
                return [...document.querySelectorAll('input, select, textarea')]
                  .filter((el) => !(el.id && document.querySelector(`label[for="${el.id}"]`)) && !el.getAttribute('aria-label'))
                  .map((el) => el.outerHTML.slice(0, 80));""")
            assert unlabelled == [], (party.name, section, unlabelled)
    problems = [e for e in console.driver.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], problems
