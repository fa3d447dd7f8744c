"""A real `veil serve`, given by the test harness (tests/integration/clients.rs starts it):
``VEIL_URL`` and an admin token in ``VEIL_ADMIN_TOKEN``; ``VEIL_MODULES`` holds the example
guest modules. The fixtures create the parties and one dataset through the client itself."""

import csv
import os
import random
from dataclasses import dataclass

import pytest

import veil_client

POLICY = """privacy_unit = "person_id"
consumers = ["researcher", "other-lab"]
approval = "manual"
min_units_per_group = 20
max_groups_per_unit = 1

[dp]
epsilon_per_job = 1.0
epsilon_total = 5.0

[columns]
educ = { class = "public", bounds = [0, 20] }
weekly_income = { class = "sensitive", bounds = [0, 2000] }
age = { class = "quasi", bounds = [16, 99] }
"""


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: these tests run against a real server started by "
                    "tests/integration/clients.rs (`cargo test --workspace`, or scripts/test.sh)")
    return value


@dataclass
class World:
    url: str
    admin: veil_client.Client
    holder: veil_client.Client
    consumer: veil_client.Client
    other: veil_client.Client
    reviewer: veil_client.Client
    dataset: str
    counts: dict  # the exact number of people per education level
    modules: str


def _people(path, seed=7, people=3000):
    rng = random.Random(seed)
    counts = {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["person_id", "educ", "weekly_income", "age"])
        for person in range(people):
            educ = rng.choice([12, 13, 14, 16])
            counts[str(educ)] = counts.get(str(educ), 0) + 1
            w.writerow([person, educ, rng.randint(100, 1900), rng.randint(18, 80)])
    return counts


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    url = _env("VEIL_URL")
    admin = veil_client.Client(url, _env("VEIL_ADMIN_TOKEN"))

    def party(name, role):
        token = admin.add_principal(name, role)
        return veil_client.Client(url, token)

    holder = party("clinic", "holder")
    csv_path = tmp_path_factory.mktemp("data") / "people.csv"
    counts = _people(csv_path)
    dataset = holder.register_dataset(csv_path, "people", privacy_unit="person_id").name
    holder.set_policy(dataset, POLICY)
    return World(url, admin, holder, party("researcher", "consumer"), party("other-lab", "consumer"),
                 party("rev", "reviewer"), dataset, counts, _env("VEIL_MODULES"))


@pytest.fixture(scope="session")
def released(world):
    """One released SQL job (approved by the holder): (job, release)."""
    job = world.consumer.submit_sql(
        "SELECT educ, COUNT(*) AS people, AVG(weekly_income) AS income FROM people GROUP BY educ",
        dataset=world.dataset, epsilon=0.5, purpose="income by education")
    world.holder.approve(job.id)
    job = world.consumer.wait(job.id, timeout=120, progress=False)
    assert job.state is veil_client.JobState.RELEASED, job
    return job, world.consumer.result(job.id)
