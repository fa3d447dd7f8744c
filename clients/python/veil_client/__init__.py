"""Veil's Python client: holders, consumers and reviewers of a Veil server, from Python.

>>> import veil_client
>>> veil = veil_client.Client("http://127.0.0.1:8080", token)          # doctest: +SKIP
>>> job = veil.submit_sql("SELECT educ, COUNT(*) AS people FROM people GROUP BY educ",
...                       dataset="people", epsilon=0.5)               # doctest: +SKIP
>>> veil.wait(job.id)                                                   # doctest: +SKIP
>>> veil.result(job.id).to_pandas()                                     # doctest: +SKIP

Receipts, proofs, checkpoints and audit exports verify offline (``veil_client.verify``).
"""

from .client import API_VERSION, Client
from .errors import (
    ApiError, BadRequest, Busy, Conflict, ErrorCode, Forbidden, JobTimeout, NotFound, NotReady,
    Unauthenticated, VeilError, VerificationError, VersionMismatch,
)
from .models import BudgetLine, Check, Column, Dataset, Job, JobState, Policy, Principal, Release
from .verify import Checkpoint, PublicKey, VerifiedLog

__version__ = "0.1.0"

__all__ = [
    "API_VERSION", "ApiError", "BadRequest", "BudgetLine", "Busy", "Check", "Checkpoint", "Client",
    "Column", "Conflict", "Dataset", "ErrorCode", "Forbidden", "Job", "JobState", "JobTimeout",
    "NotFound", "NotReady", "Policy", "Principal", "PublicKey", "Release", "Unauthenticated",
    "VeilError", "VerificationError", "VerifiedLog", "VersionMismatch",
]
