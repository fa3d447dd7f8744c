"""The client against a real server: every party's calls, errors with their codes, results as
frames, receipts and the audit log verified offline."""

import copy
import http.server
import json
import os
import threading

import pytest

import veil_client
from veil_client import ErrorCode, JobState, VerificationError


def test_each_party_is_who_its_token_says(world):
    assert world.holder.whoami() == veil_client.Principal("clinic", "holder")
    assert world.consumer.whoami().role == "consumer"
    assert world.reviewer.whoami().role == "reviewer"


def test_a_client_refuses_a_server_of_another_api_version():
    class Newer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "api": "v2"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Newer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(veil_client.VersionMismatch) as e:
            veil_client.Client(f"http://127.0.0.1:{server.server_port}", "t")
        assert e.value.server == "v2" and "API v2" in str(e.value) and "v1" in str(e.value)
    finally:
        server.shutdown()


def test_errors_carry_the_api_codes(world):
    with pytest.raises(veil_client.Unauthenticated) as e:
        veil_client.Client(world.url, "veil_not-a-token").whoami()
    assert e.value.code is ErrorCode.UNAUTHENTICATED and e.value.status == 401
    with pytest.raises(veil_client.Forbidden) as e:
        world.consumer.set_policy(world.dataset, "approval = 'auto'")
    assert e.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(veil_client.NotFound) as e:
        world.consumer.job("job-999999")
    assert e.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(veil_client.BadRequest) as e:
        world.consumer.check({"dataset": world.dataset, "sql": "SELECT * FROM people", "epsilon": 0.1})
    assert e.value.code is ErrorCode.BAD_REQUEST and "releases rows" in e.value.message


def test_the_catalog_shows_metadata_never_rows(world):
    (entry,) = world.consumer.datasets()
    assert entry.name == world.dataset and entry.privacy_unit == "person_id"
    assert {c.name for c in entry.columns} >= {"educ", "weekly_income"}
    assert "rows" not in entry.raw and "content_hash" not in entry.raw
    assert "rows" in world.holder.dataset(world.dataset).raw


def test_a_check_forecasts_noise_and_spends_nothing(world):
    before = {b.dataset: b.spent for b in world.consumer.budget()}
    check = world.consumer.check({"dataset": world.dataset, "epsilon": 0.5,
                                  "sql": "SELECT educ, COUNT(*) AS people FROM people GROUP BY educ"})
    assert check.approval == "manual" and check.refusal is None
    assert check.forecast["units"]["noise_scale"] > 0 and check.forecast["units"]["ci95_half_width"] > 0
    assert {b.dataset: b.spent for b in world.consumer.budget()} == before


def test_a_sql_job_is_approved_released_and_read_as_frames(world, released):
    job, release = released
    states = []
    world.consumer.wait(job.id, progress=states.append)
    assert [s.state for s in states] == [JobState.RELEASED]
    frame = release.to_pandas()
    assert list(frame.columns[:5]) == ["educ", "people", "people_noise_scale", "people_ci95_low", "people_ci95_high"]
    assert {"income_mean", "income_mean_ci95_low", "income_mean_ci95_high"} <= set(frame.columns)
    for _, row in frame.iterrows():
        exact = world.counts[row["educ"]]
        assert row["people_ci95_low"] <= row["people"] <= row["people_ci95_high"]
        # Discrete Laplace noise beyond 12 scales has probability below e^-12 per cell.
        assert abs(row["people"] - exact) <= 12 * row["people_noise_scale"], (row, exact)
    table = release.to_arrow()
    assert table.num_rows == len(frame) == len(world.counts)
    assert table.column_names == list(frame.columns)


def test_the_holder_queue_and_logs(world):
    job = world.consumer.submit_sql("SELECT COUNT(*) AS people FROM people", dataset=world.dataset, epsilon=0.2)
    queue = world.holder.jobs("awaiting_approval")
    assert job.id in [j.id for j in queue]
    assert "SELECT COUNT(*)" in next(j for j in queue if j.id == job.id).raw["manifest"]
    rejected = world.holder.reject(job.id, "not this quarter")
    assert rejected.state is JobState.REJECTED
    assert world.consumer.job(job.id).state is JobState.REFUSED
    with pytest.raises(veil_client.Conflict):
        world.holder.approve(job.id)


def test_a_consumer_never_sees_another_consumers_job(world, released):
    job, _ = released
    with pytest.raises(veil_client.NotFound):
        world.other.job(job.id)
    with pytest.raises(veil_client.NotFound):
        world.other.result(job.id)
    assert job.id not in [j.id for j in world.other.jobs()]


def test_a_module_job_from_a_file_and_a_manifest_dict(world):
    manifest = {
        "dataset": world.dataset, "module": "income_by_education.wasm", "purpose": "wages",
        "columns": ["educ", "weekly_income"], "epsilon": 0.3,
        "output": {"keys": ["education"],
                   "values": [{"name": "weekly_income", "bounds": [0, 2000], "aggregate": "mean"}]},
    }
    module = os.path.join(world.modules, "income_by_education.wasm")
    job = world.consumer.submit(manifest, module)
    world.holder.approve(job.id)
    assert world.consumer.wait(job.id, timeout=120, progress=False).state is JobState.RELEASED
    frame = world.consumer.result(job.id).to_pandas()
    assert "weekly_income_mean" in frame.columns and len(frame) > 0


def test_receipts_verify_offline_and_tampering_is_named(world, released):
    job, _ = released
    key = world.consumer.public_key()
    receipt = world.consumer.receipt(job.id)
    facts = world.consumer.verify_receipt(receipt, key)
    assert facts["job"] == job.id and facts["epsilon_micro"] == 500_000

    def broken(change):
        r = copy.deepcopy(receipt)
        change(r)
        with pytest.raises(VerificationError) as e:
            veil_client.verify.verify_receipt(r, key)
        return str(e.value)

    assert "signature" in broken(lambda r: r["facts"].update(epsilon_micro=1))
    assert "result" in broken(lambda r: r.update(result=r["result"].replace("1", "2", 1)))
    assert "audit path" in broken(lambda r: r["proofs"][1]["path"].__setitem__(0, "00" * 32))
    assert "inclusion proofs" in broken(lambda r: r["proofs"].pop())


def test_the_audit_export_verifies_and_tampering_names_the_entry(world, released):
    text = world.reviewer.audit_export()
    log = world.reviewer.verify_export(text)
    assert log.entries >= 5 and log.rotations == 0
    lines = text.strip().split("\n")
    # A changed field in entry 2 breaks its signature.
    entry = json.loads(lines[2])
    entry["event"]["dataset"] = "clinic:other"
    tampered = "\n".join(lines[:2] + [json.dumps(entry, separators=(",", ":"))] + lines[3:])
    first = world.reviewer.public_key(first=True)
    with pytest.raises(VerificationError) as e:
        veil_client.verify.verify_export(tampered, first)
    assert e.value.entry == 2
    # A dropped last entry disagrees with the checkpoint.
    with pytest.raises(VerificationError) as e:
        veil_client.verify.verify_export("\n".join(lines[:-2] + lines[-1:]), first)
    assert "truncated" in str(e.value)


def test_checkpoints_and_consistency_between_them(world):
    key = world.reviewer.public_key()
    old = world.reviewer.checkpoint(key)
    world.consumer.check({"dataset": world.dataset, "epsilon": 0.1,
                          "sql": "SELECT COUNT(*) AS people FROM people"})  # logs `job_checked`
    new = world.reviewer.checkpoint(key)
    assert new.size > old.size
    proof = world.reviewer.consistency_proof(old.size, new.size)
    assert veil_client.verify.verify_consistency_proof(proof, key, trusted_old=old.note) == (old.size, new.size)
    forged = old.note.replace(old.note.split("\n")[2], "A" * 43 + "=")
    with pytest.raises(VerificationError):
        veil_client.verify.verify_consistency_proof(proof, key, trusted_old=forged)


def test_the_budget_shows_what_was_spent(world, released):
    (line,) = [b for b in world.consumer.budget() if b.dataset == world.dataset]
    assert float(line.spent) >= 0.5 and float(line.total) == 5.0
    assert abs(float(line.spent) + float(line.remaining) - float(line.total)) < 1e-9


def test_the_holder_reads_its_policy_history_and_consumers_ledgers(world, released):
    versions = world.holder.policy_versions(world.dataset)
    assert [v["version"] for v in versions] == [1] and "epsilon_total = 5.0" in versions[0]["toml"]
    ledgers = world.holder.dataset_budgets(world.dataset)
    assert set(ledgers) == {"researcher", "other-lab"}
    assert ledgers["researcher"].spent == next(b.spent for b in world.consumer.budget() if b.dataset == world.dataset)
    with pytest.raises(veil_client.Forbidden):
        world.consumer.dataset_budgets(world.dataset)


def test_a_consumer_reads_the_policy_without_other_consumers(world):
    mine = world.consumer.policy(world.dataset)
    assert mine.consumers_withheld and "other-lab" not in mine.toml and "researcher" in mine.toml
    whole = world.holder.policy(world.dataset)
    assert not whole.consumers_withheld and "other-lab" in whole.toml
    assert mine.hash == whole.hash
