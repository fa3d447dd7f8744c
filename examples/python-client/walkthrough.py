# %% [markdown]
# # Veil from Python: the three parties in one notebook
#
# A notebook in the percent format (Jupyter, VS Code and Jupytext open it as cells; `python
# walkthrough.py` runs it top to bottom). It needs a running `veil serve` and an admin token:
#
#     VEIL_URL=http://127.0.0.1:8420 VEIL_ADMIN_TOKEN=veil_... python walkthrough.py
#
# The admin creates a holder, a consumer and a reviewer; the holder registers a small CSV and sets
# its policy; the consumer checks the cost of a DP SQL question, submits it, and reads the answer
# as a DataFrame once the holder approved it; everyone checks signatures offline.

# %%
import csv
import os
import random
import secrets
import tempfile

import veil_client

url = os.environ.get("VEIL_URL", "http://127.0.0.1:8420")
admin = veil_client.Client(url, os.environ["VEIL_ADMIN_TOKEN"])
suffix = secrets.token_hex(3)  # fresh names, so the notebook can run again on the same server


def new_party(role):
    name = f"nb-{role}-{suffix}"
    token = admin.add_principal(name, role)
    return name, veil_client.Client(url, token)


_, holder = new_party("holder")
consumer_name, consumer = new_party("consumer")
_, reviewer = new_party("reviewer")

# %% [markdown]
# ## The holder registers data and sets a release policy

# %%
rng = random.Random(1)
path = os.path.join(tempfile.mkdtemp(), "visits.csv")
with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["patient", "region", "visits", "cost"])
    for patient in range(2000):
        w.writerow([patient, rng.choice(["north", "south", "east"]), rng.randint(0, 12), rng.randint(0, 5000)])

dataset = holder.register_dataset(path, "visits", privacy_unit="patient").name
holder.set_policy(dataset, f"""
privacy_unit = "patient"
consumers = ["{consumer_name}"]
approval = "manual"
min_units_per_group = 20
max_groups_per_unit = 1

[dp]
epsilon_per_job = 1.0
epsilon_total = 2.0

[columns]
region = {{ class = "public" }}
visits = {{ class = "sensitive", bounds = [0, 12] }}
cost = {{ class = "sensitive", bounds = [0, 5000] }}
""")
print(holder.policy(dataset).toml)

# %% [markdown]
# ## The consumer asks what a question would cost, then asks it

# %%
question = {
    "dataset": dataset,
    "purpose": "mean cost by region",
    "sql": "SELECT region, COUNT(*) AS patients, AVG(cost) AS mean_cost FROM visits GROUP BY region",
    "epsilon": 0.5,
}
check = consumer.check(question)
print("approval:", check.approval, "| ε left after:", check.epsilon_left_after)
print("noise scale of each count:", check.forecast["units"]["noise_scale"])
job = consumer.submit(question)
print(job.id, job.state.value)

# %% [markdown]
# ## The holder approves it from the queue

# %%
for pending in holder.jobs("awaiting_approval"):
    print(pending.id, pending.raw["consumer"], pending.raw["manifest"].splitlines()[0])
holder.approve(job.id)

# %% [markdown]
# ## The consumer reads the released table: values, noise scales and 95% intervals

# %%
consumer.wait(job.id)
release = consumer.result(job.id)
frame = release.to_pandas()
print(frame[["region", "patients", "patients_ci95_low", "patients_ci95_high", "mean_cost_mean"]])
print(consumer.budget())

# %% [markdown]
# ## Anyone with the domain's public key checks the receipt and the log offline

# %%
key = consumer.public_key()
print("domain key fingerprint:", key.fingerprint())
facts = veil_client.verify.verify_receipt(consumer.receipt(job.id), key)
print("receipt holds: job", facts["job"], "charged ε =", facts["epsilon_micro"] / 1e6)
log = reviewer.verify_export()
print("audit log holds:", log.entries, "entries under a signed checkpoint")
