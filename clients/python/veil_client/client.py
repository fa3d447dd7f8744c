"""``Client``: one principal's session with a Veil server, over its versioned HTTP API (``/v1``).

The server decides everything — roles, visibility, budgets; the client only speaks the API and
checks what the domain signs, offline, with the domain's public key (``verify``).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Optional, Union

from . import verify as _verify
from .errors import JobTimeout, VeilError, VersionMismatch, api_error
from .models import BudgetLine, Check, Dataset, Job, JobState, Policy, Principal, Release

#: The API version this client speaks (``GET /v1/health`` answers the server's).
API_VERSION = "v1"

Manifest = Union[str, dict]
Progress = Union[bool, Callable[[Job], None]]

# The longest a single `?wait=` poll may wait on the server (the API's limit).
_MAX_POLL_SECONDS = 30


def _manifest_text(manifest: Manifest) -> str:
    """A manifest as TOML text: given as text, or as a dict written with ``tomli_w``."""
    if isinstance(manifest, str):
        return manifest
    import tomli_w

    return tomli_w.dumps(manifest)


def _module_bytes(module: Union[None, bytes, str, os.PathLike]) -> Optional[bytes]:
    if module is None or isinstance(module, bytes):
        return module
    with open(module, "rb") as f:
        return f.read()


class Client:
    """A session as one principal (its bearer token).

    ``url`` is the server's base address (``http://127.0.0.1:8080``). On creation the client asks
    the server's API version and raises :class:`VersionMismatch` when it is not ``API_VERSION``
    (pass ``check_version=False`` to skip). ``timeout`` bounds each HTTP request, in seconds.
    """

    def __init__(self, url: str, token: Optional[str] = None, *, timeout: float = 60.0, check_version: bool = True):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        if check_version:
            server = self.health().get("api", "unknown")
            if server != API_VERSION:
                raise VersionMismatch(server, API_VERSION)

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    # ---- transport --------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, body: Optional[bytes] = None,
                 content_type: Optional[str] = None, query: Optional[dict] = None,
                 auth: bool = True, timeout: Optional[float] = None) -> tuple[bytes, str]:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        req = urllib.request.Request(url, data=body, method=method)
        if auth:
            if not self._token:
                raise VeilError(f"{method} {path} needs a token: Client(url, token)")
            req.add_header("Authorization", f"Bearer {self._token}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise api_error(e.code, err["code"], err["message"]) from None
            except (ValueError, KeyError, TypeError):
                raise api_error(e.code, "internal", raw.decode(errors="replace")[:500]) from None
        except urllib.error.URLError as e:
            raise VeilError(f"cannot reach {self.url}: {e.reason}") from None

    def _json(self, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        if payload is not None:
            kw.update(body=json.dumps(payload).encode(), content_type="application/json")
        raw, _ = self._request(method, path, **kw)
        return json.loads(raw) if raw else None

    @staticmethod
    def _quote(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    # ---- anyone -----------------------------------------------------------------------------

    def health(self) -> dict:
        """``{"status": "ok", "api": "v1"}`` while the server and its store answer."""
        return self._json("GET", "/v1/health", auth=False)

    def whoami(self) -> Principal:
        d = self._json("GET", "/v1/whoami")
        return Principal(d["name"], d["role"])

    def datasets(self) -> list[Dataset]:
        """The catalog entries the caller may see."""
        return [Dataset.from_api(d) for d in self._json("GET", "/v1/datasets")["datasets"]]

    def dataset(self, name: str) -> Dataset:
        return Dataset.from_api(self._json("GET", f"/v1/datasets/{self._quote(name)}"))

    def policy(self, dataset: str) -> Policy:
        return Policy.from_api(self._json("GET", f"/v1/datasets/{self._quote(dataset)}/policy"))

    def jobs(self, state: Union[None, str, JobState] = None) -> list[Job]:
        """Jobs the caller may see; a holder's approval queue is ``state="awaiting_approval"``."""
        q = {"state": JobState(state).value} if state else None
        return [Job.from_api(j) for j in self._json("GET", "/v1/jobs", query=q)["jobs"]]

    def job(self, job_id: str) -> Job:
        return Job.from_api(self._json("GET", f"/v1/jobs/{self._quote(job_id)}"))

    # ---- holders ----------------------------------------------------------------------------

    def register_dataset(self, path: Union[str, os.PathLike], name: str, *, privacy_unit: Optional[str] = None,
                         columns: Optional[list[str]] = None, link_keys: Optional[list[str]] = None) -> Dataset:
        """Registers a CSV, Parquet or Arrow IPC file (by its extension) as dataset ``name``."""
        text = os.fspath(path)
        content_type = "text/csv" if text.lower().endswith(".csv") else "application/octet-stream"
        with open(text, "rb") as f:
            data = f.read()
        query = {
            "name": name,
            "privacy_unit": privacy_unit,
            "columns": ",".join(columns) if columns else None,
            "link_keys": ",".join(link_keys) if link_keys else None,
        }
        raw, _ = self._request("POST", "/v1/datasets", body=data, content_type=content_type, query=query)
        d = json.loads(raw)
        return Dataset.from_api(d.get("dataset", d))

    def set_policy(self, dataset: str, toml_text: str) -> dict:
        """Sets a new policy version (TOML, docs/policy.md); a bad policy raises ``BadRequest``."""
        raw, _ = self._request("PUT", f"/v1/datasets/{self._quote(dataset)}/policy",
                               body=toml_text.encode(), content_type="application/toml")
        return json.loads(raw)

    def policy_versions(self, dataset: str) -> list[dict]:
        """Every policy version of one's own dataset, oldest first (holder, reviewer, admin)."""
        return self._json("GET", f"/v1/datasets/{self._quote(dataset)}/policy/versions")["versions"]

    def dataset_budgets(self, dataset: str) -> dict[str, BudgetLine]:
        """Each consumer's ledger on one's own dataset, by consumer (holder, reviewer, admin)."""
        lines = self._json("GET", f"/v1/datasets/{self._quote(dataset)}/budgets")["budgets"]
        return {b["consumer"]: BudgetLine.from_api(b) for b in lines}

    def approve(self, job_id: str) -> Job:
        return Job.from_api(self._json("POST", f"/v1/jobs/{self._quote(job_id)}/approve", {}))

    def reject(self, job_id: str, reason: str = "") -> Job:
        return Job.from_api(self._json("POST", f"/v1/jobs/{self._quote(job_id)}/reject", {"reason": reason}))

    def logs(self, job_id: str) -> list[str]:
        """The holder-side log of a job (module output, traps, bounding statistics)."""
        return self._json("GET", f"/v1/jobs/{self._quote(job_id)}/logs")["lines"]

    def certificate(self, dataset: str) -> dict:
        return self._json("GET", f"/v1/datasets/{self._quote(dataset)}/certificate")

    # ---- consumers --------------------------------------------------------------------------

    @staticmethod
    def _job_body(manifest: Manifest, module: Union[None, bytes, str, os.PathLike]) -> dict:
        body = {"manifest": _manifest_text(manifest)}
        wasm = _module_bytes(module)
        if wasm is not None:
            body["module"] = base64.b64encode(wasm).decode()
        return body

    def submit(self, manifest: Manifest, module: Union[None, bytes, str, os.PathLike] = None) -> Job:
        """Submits a job: a manifest (TOML text or a dict) and, for a module job, the module (bytes
        or a path). A SQL job's manifest has ``sql`` and no module (docs/sql.md). A job the policy
        or budget refuses comes back ``refused`` with ``refusal`` saying why."""
        return Job.from_api(self._json("POST", "/v1/jobs", self._job_body(manifest, module)))

    def submit_sql(self, sql: str, *, dataset: str, epsilon: float, **manifest: Any) -> Job:
        """A DP SQL job in one call; ``manifest`` adds fields (``purpose``, ``bounds``, ``noise``...)."""
        return self.submit({"dataset": dataset, "sql": sql, "epsilon": epsilon, **manifest})

    def check(self, manifest: Manifest, module: Union[None, bytes, str, os.PathLike] = None) -> Check:
        """What the job would cost and release — approval, each cell's noise scale and interval,
        the budget left after it — without spending anything. ``epsilon`` may be left out."""
        return Check.from_api(self._json("POST", "/v1/jobs/check", self._job_body(manifest, module)))

    def wait(self, job_id: str, *, timeout: float = 600.0, progress: Progress = True) -> Job:
        """Waits until the job is no longer queued or running (it may then await approval).

        ``progress=True`` writes each state the job passes through to stderr; a callable gets
        each new state instead. Raises :class:`JobTimeout` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        start, last = time.monotonic(), None
        while True:
            left = deadline - time.monotonic()
            poll = max(0, min(_MAX_POLL_SECONDS, int(left)))
            job = Job.from_api(self._json("GET", f"/v1/jobs/{self._quote(job_id)}",
                                          query={"wait": poll}, timeout=poll + self.timeout))
            if job.state != last:
                last = job.state
                if callable(progress):
                    progress(job)
                elif progress:
                    print(f"{job.id}: {job.state.value} ({time.monotonic() - start:.1f} s)", file=sys.stderr)
            if job.state.settled:
                return job
            if time.monotonic() >= deadline:
                raise JobTimeout(f"{job_id} is still {job.state.value} after {timeout} s")

    def result(self, job_id: str) -> Release:
        """The released table; ``.to_pandas()`` / ``.to_arrow()`` give values, scales and intervals."""
        return Release.from_api(self._json("GET", f"/v1/jobs/{self._quote(job_id)}/result"))

    def receipt(self, job_id: str) -> dict:
        """The job's signed receipt (keep it; :meth:`verify_receipt` checks it offline)."""
        return self._json("GET", f"/v1/jobs/{self._quote(job_id)}/receipt")

    def budget(self) -> list[BudgetLine]:
        return [BudgetLine.from_api(b) for b in self._json("GET", "/v1/budget")["budget"]]

    # ---- reviewers --------------------------------------------------------------------------

    def public_key(self, *, first: bool = False) -> _verify.PublicKey:
        """The domain's signing key now (or the log's first key). Compare its ``fingerprint()``
        with one received out of band before trusting what it verifies."""
        d = self._json("GET", "/v1/public-key", auth=False)
        return _verify.PublicKey.parse(d["first_public_key" if first else "public_key"])

    def checkpoint(self, key: Optional[_verify.PublicKey] = None) -> _verify.Checkpoint:
        """A fresh signed checkpoint, verified against ``key`` (default: the server's key now)."""
        raw, _ = self._request("GET", "/v1/audit/checkpoint", auth=False)
        return _verify.verify_checkpoint(raw.decode(), key or self.public_key())

    def audit_log(self, **filters: Optional[str]) -> list[dict]:
        """Entries matching ``dataset``, ``consumer``, ``module``, ``decision``, ``since``, ``until``."""
        return self._json("GET", "/v1/audit/log", query=filters)["entries"]

    def audit_summary(self) -> dict:
        return self._json("GET", "/v1/audit/summary")

    def audit_export(self) -> str:
        """The whole log as JSON lines with a signed checkpoint (verify with :meth:`verify_export`)."""
        raw, _ = self._request("GET", "/v1/audit/export")
        return raw.decode()

    def inclusion_proof(self, entry: int, size: Optional[int] = None) -> dict:
        return self._json("GET", "/v1/audit/proof/inclusion", query={"entry": entry, "size": size})

    def consistency_proof(self, old_size: int, size: Optional[int] = None) -> dict:
        return self._json("GET", "/v1/audit/proof/consistency", query={"from": old_size, "size": size})

    # ---- admins -----------------------------------------------------------------------------

    def add_principal(self, name: str, role: str) -> str:
        """Creates principal ``name`` with ``role`` (holder, consumer, reviewer, admin); returns its
        token, which the server shows only this once and stores only as a hash."""
        return self._json("POST", "/v1/admin/principals", {"name": name, "role": role})["token"]

    def principals(self) -> list[Principal]:
        return [Principal(p["name"], p["role"]) for p in self._json("GET", "/v1/admin/principals")["principals"]]

    # ---- offline checks (the server's word is not needed) -----------------------------------

    def verify_receipt(self, receipt: dict, key: Optional[_verify.PublicKey] = None) -> dict:
        """Checks a receipt offline; returns its facts. Pass the key you trust, or the server's is
        fetched (which trusts the server for the key)."""
        return _verify.verify_receipt(receipt, key or self.public_key())

    def verify_export(self, text: Optional[str] = None, first_key: Optional[_verify.PublicKey] = None) -> _verify.VerifiedLog:
        """Verifies an export (default: a fresh one) from the log's first key."""
        return _verify.verify_export(text if text is not None else self.audit_export(),
                                     first_key or self.public_key(first=True))
