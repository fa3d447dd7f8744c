"""Typed views of the API's answers. Each keeps the answer it was made from in ``raw``."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class JobState(str, enum.Enum):
    """A job's state. Consumers see the first five; holders and reviewers also the last two."""

    QUEUED = "queued"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    RELEASED = "released"
    REFUSED = "refused"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def settled(self) -> bool:
        """Whether the job will not change state by itself (a holder's approval aside)."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    raw: dict = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """A catalog entry: metadata only (a consumer never sees rows, row counts or content hashes)."""

    name: str
    owner: str
    columns: list[Column]
    privacy_unit: Optional[str]
    created_at: str
    raw: dict = field(repr=False, default_factory=dict)

    @staticmethod
    def from_api(d: dict) -> "Dataset":
        cols = [Column(c.get("name", ""), c.get("type", ""), c) for c in d.get("columns", [])]
        return Dataset(d["name"], d["owner"], cols, d.get("privacy_unit"), d["created_at"], d)


@dataclass(frozen=True)
class Policy:
    dataset: str
    version: int
    hash: str
    holder: str
    toml: str
    #: True in a consumer's copy: ``toml`` lists only that consumer, so it does not hash to
    #: ``hash`` (the holder's full text, as receipts name it).
    consumers_withheld: bool = False

    @staticmethod
    def from_api(d: dict) -> "Policy":
        return Policy(d["dataset"], d["version"], d["hash"], d["holder"], d["toml"],
                      bool(d.get("consumers_withheld", False)))


@dataclass(frozen=True)
class Job:
    """A job as the caller may see it. ``refusal`` is set on a submission the pre-check refused."""

    id: str
    dataset: str
    state: JobState
    code: Optional[str]
    epsilon: str
    created_at: str
    release_at: Optional[str] = None
    refusal: Optional[str] = None
    raw: dict = field(repr=False, default_factory=dict)

    @staticmethod
    def from_api(d: dict) -> "Job":
        return Job(
            d["id"], d["dataset"], JobState(d["state"]), d.get("code"), d["epsilon"],
            d["created_at"], d.get("release_at"), d.get("refusal"), d,
        )


@dataclass(frozen=True)
class BudgetLine:
    """ε and δ of one dataset in the caller's ledger (decimal text, exact)."""

    dataset: str
    spent: str
    remaining: str
    total: str
    per_job_cap: str
    delta_spent: str
    delta_remaining: str
    delta_total: str

    @staticmethod
    def from_api(d: dict) -> "BudgetLine":
        return BudgetLine(**{k: d[k] for k in BudgetLine.__dataclass_fields__})


@dataclass(frozen=True)
class Check:
    """What a job would cost and release, before anything is spent (``POST /v1/jobs/check``)."""

    approval: str
    refusal: Optional[str]
    epsilon_left_after: Optional[float]
    forecast: Optional[dict]
    notes: list[str]
    raw: dict = field(repr=False, default_factory=dict)

    @staticmethod
    def from_api(d: dict) -> "Check":
        return Check(
            d["approval"], d.get("refusal"), d.get("epsilon_left_after"), d.get("forecast"),
            list(d.get("notes", [])), d,
        )


_CELL_PARTS = ("value", "noise_scale", "ci95_low", "ci95_high")


def _cell(prefix: str, cell: Any) -> dict:
    """A noisy cell as flat columns: value, noise scale, interval bounds."""
    if isinstance(cell, dict):
        low, high = (cell.get("ci95") or [None, None])[:2]
        return {
            prefix: cell.get("value"),
            f"{prefix}_noise_scale": cell.get("noise_scale"),
            f"{prefix}_ci95_low": low,
            f"{prefix}_ci95_high": high,
        }
    # A bare number (results released before means carried intervals) or null.
    return {prefix: cell, f"{prefix}_noise_scale": None, f"{prefix}_ci95_low": None, f"{prefix}_ci95_high": None}


@dataclass(frozen=True)
class Release:
    """A released, noised table: one row per group, each cell with its noise scale and 95% interval."""

    key_names: list[str]
    rows: list[dict]
    epsilon: float
    delta: float
    mechanism: str
    count_name: str
    raw: dict = field(repr=False, default_factory=dict)

    @staticmethod
    def from_api(d: dict) -> "Release":
        return Release(
            list(d["key_names"]), list(d["rows"]), d["epsilon"], d["delta"], d["mechanism"],
            d.get("count_name", "units"), d,
        )

    def records(self) -> list[dict]:
        """Flat rows: the group keys, then ``<count>``, ``<count>_noise_scale``, ``<count>_ci95_low``
        and ``_high``, then the same four columns for each value's statistic (``income_mean``...)."""
        out = []
        for row in self.rows:
            rec: dict = dict(zip(self.key_names, row["key"]))
            rec.update(_cell(self.count_name, row["units"]))
            for v in row["values"]:
                for stat in ("sum", "mean", "variance", "stddev"):
                    if stat in v:
                        rec.update(_cell(f"{v['name']}_{stat}", v[stat]))
                if "quantile" in v:
                    q = v["quantile"]
                    rec[f"{v['name']}_quantile"] = q["value"]
                    rec[f"{v['name']}_quantile_noise_scale"] = q["noise_scale"]
                    rec[f"{v['name']}_quantile_bin_width"] = q["bin_width"]
            out.append(rec)
        return out

    def _columns(self) -> list[str]:
        cols: list[str] = []
        for rec in self.records():
            cols.extend(c for c in rec if c not in cols)
        return cols

    def to_pandas(self):
        """The release as a ``pandas.DataFrame`` (needs pandas: ``pip install veil-client[frames]``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install 'veil-client[frames]'") from None
        return pd.DataFrame.from_records(self.records(), columns=self._columns())

    def to_arrow(self):
        """The release as a ``pyarrow.Table`` (needs pyarrow: ``pip install veil-client[frames]``)."""
        try:
            import pyarrow as pa
        except ImportError:
            raise ImportError("to_arrow needs pyarrow: pip install 'veil-client[frames]'") from None
        cols = self._columns()
        recs = self.records()
        return pa.table({c: [r.get(c) for r in recs] for c in cols})
