"""Browser tests of the web console: headless Chromium (Debian's), driven by Selenium through
ChromeDriver, against a real `veil serve` started by tests/integration/clients.rs (``VEIL_URL``,
``VEIL_ADMIN_TOKEN``). The parties and their data are made through the Python client."""

import csv
import os
import pathlib
import random
import tempfile
from dataclasses import dataclass

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

import veil_client

POLICY = """privacy_unit = "person_id"
consumers = ["analyst", "rival"]
approval = "manual"
min_units_per_group = 20
max_groups_per_unit = 1

[dp]
epsilon_per_job = 1.0
epsilon_total = 4.0

[columns]
region = { class = "public" }
weekly_income = { class = "sensitive", bounds = [0, 2000] }
"""

QUESTION = "SELECT region, COUNT(*) AS people, AVG(weekly_income) AS income FROM people GROUP BY region"


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run through tests/integration/clients.rs (cargo test, scripts/test.sh)")
    return value


@dataclass
class Party:
    name: str
    token: str
    client: veil_client.Client


@dataclass
class World:
    url: str
    holder: Party
    analyst: Party
    rival: Party
    reviewer: Party
    dataset: str
    released: str  # a job of the analyst's, released


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    url = _env("VEIL_URL")
    admin = veil_client.Client(url, _env("VEIL_ADMIN_TOKEN"))

    def party(name, role):
        token = admin.add_principal(name, role)
        return Party(name, token, veil_client.Client(url, token))

    holder, analyst, rival, reviewer = (party("hospital", "holder"), party("analyst", "consumer"),
                                        party("rival", "consumer"), party("auditor", "reviewer"))
    path = tmp_path_factory.mktemp("data") / "people.csv"
    rng = random.Random(3)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["person_id", "region", "weekly_income"])
        for person in range(1500):
            w.writerow([person, rng.choice(["north", "south", "west"]), rng.randint(100, 1900)])
    dataset = holder.client.register_dataset(path, "people", privacy_unit="person_id").name
    holder.client.set_policy(dataset, POLICY)
    job = analyst.client.submit_sql(QUESTION, dataset=dataset, epsilon=0.5)
    holder.client.approve(job.id)
    assert analyst.client.wait(job.id, timeout=120, progress=False).state is veil_client.JobState.RELEASED
    return World(url, holder, analyst, rival, reviewer, dataset, job.id)


def _browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="veil-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1366,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


@pytest.fixture
def browser():
    driver = _browser()
    driver.execute_cdp_cmd("Network.enable", {})
    yield driver
    driver.quit()


class Console:
    """The console in a browser, as one party."""

    def __init__(self, driver, url):
        self.driver, self.url = driver, url
        # Pages re-render as their data arrives, so an element found a moment ago may be gone:
        # waits look again instead of failing on a stale reference.
        self.wait = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))

    def sign_in(self, party):
        self.driver.get(self.url + "/console/")
        field = self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]")))
        field.send_keys(party.token + Keys.ENTER)  # keyboard only
        self.wait.until(EC.text_to_be_present_in_element((By.ID, "who"), f"Signed in as {party.name}"))
        self.settled()

    def open(self, title):
        self.driver.find_element(By.XPATH, f"//nav//button[normalize-space()='{title}']").click()
        self.settled()

    def settled(self):
        self.wait.until(lambda d: "Loading" not in d.find_element(By.ID, "main").text)

    def click(self, text):
        self.wait.until(EC.element_to_be_clickable((By.XPATH, f"//button[normalize-space()='{text}']"))).click()

    def text(self, css):
        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css))).text

    def screenshot(self, name):
        """Saves the page; into docs/console/ when VEIL_REFRESH_SCREENSHOTS=1 (the documented ones)."""
        root = pathlib.Path(__file__).resolve().parents[2]
        folder = root / "docs" / "console" if os.environ.get("VEIL_REFRESH_SCREENSHOTS") == "1" \
            else pathlib.Path(tempfile.gettempdir()) / "veil-console-screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.driver.set_window_size(1366, max(900, self.driver.execute_script("return document.body.scrollHeight") + 40))
        assert self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000, f"{path} is nearly empty"
        return path

    def api_traffic(self):
        """Every /v1 response the page received: (url, body)."""
        seen = []
        for entry in self.driver.get_log("performance"):
            import json
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") != "Network.responseReceived":
                continue
            url = msg["params"]["response"]["url"]
            if "/v1/" not in url:
                continue
            try:
                body = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": msg["params"]["requestId"]})["body"]
            except Exception:  # a body the browser no longer holds: the URL is still checked
                body = ""
            seen.append((url, body))
        return seen


@pytest.fixture
def console(browser, world):
    return Console(browser, world.url)
