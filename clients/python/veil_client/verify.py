"""Offline verification of what the domain signs: checkpoints, proofs, receipts, audit exports.

Everything here needs only the domain's public key (``Client.public_key()`` fetches it; a reviewer
should compare its fingerprint with one obtained out of band). The byte formats are Veil's own and
are specified beside the Rust code that writes them (``crates/veil-audit``):

- checkpoints are C2SP signed notes (``c2sp.org/signed-note``, ``c2sp.org/tlog-checkpoint``);
- the log is an RFC 6962 Merkle tree, leaves ``SHA-256(0x00 || public line)``;
- a receipt signs ``b"veil-receipt-v1\\n"`` followed by the compact JSON of its facts, in the
  field order of ``ReceiptFacts``.

Every failure raises :class:`VerificationError` naming the first thing that does not hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import VerificationError

_ALG_ED25519 = 0x01
_RECEIPT_CONTEXT = b"veil-receipt-v1\n"
_ENTRY_CONTEXT = b"veil-audit-entry-v2\n"
_SEAL_CONTEXT = b"veil-audit-sealed-v2\n"
_ENTRY_VERSION = 2
_EM_DASH = "\u2014"


# ---- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """A domain verifier key, as ``veil`` prints it: ``<name>+<hex key id>+<base64(0x01 || key)>``."""

    name: str
    key_id: bytes
    raw: bytes

    @staticmethod
    def parse(text: str) -> "PublicKey":
        parts = text.strip().split("+", 2)  # base64 may itself hold "+"
        if len(parts) != 3:
            raise VerificationError(
                "a public key is `<name>+<hex key id>+<base64 key>` (as `GET /v1/public-key` "
                f"gives it), not {text!r}"
            )
        name, key_id_hex, b64 = parts
        try:
            key_id = bytes.fromhex(key_id_hex)
            blob = base64.b64decode(b64, validate=True)
        except ValueError as e:
            raise VerificationError(f"malformed public key: {e}") from None
        if len(blob) != 33 or blob[0] != _ALG_ED25519:
            raise VerificationError("malformed public key: not an Ed25519 key (33 bytes, 0x01 first)")
        key = PublicKey(name, key_id, blob[1:])
        if key.expected_key_id() != key_id:
            raise VerificationError("malformed public key: the key id does not match the key")
        return key

    def expected_key_id(self) -> bytes:
        digest = hashlib.sha256(self.name.encode() + b"\n" + bytes([_ALG_ED25519]) + self.raw)
        return digest.digest()[:4]

    def fingerprint(self) -> str:
        """``SHA256:<hex>`` of the raw key: what to compare with a fingerprint received out of band."""
        return "SHA256:" + hashlib.sha256(self.raw).hexdigest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):
            return False


# ---- canonical JSON (serde_json's compact form) ---------------------------------------------


def _canonical(value: Any) -> bytes:
    """Compact JSON as serde_json writes it: no spaces, non-ASCII kept, keys in the given order.

    Requires every number to be an integer (Veil's signed structures hold no floats).
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _sorted(value: Any) -> Any:
    """`value` with every object's keys sorted (serde_json's map order without preserve_order)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _strict_json(text: str, what: str) -> Any:
    """Parses JSON, refusing duplicate keys (two readers could disagree on which one counts)."""

    def no_duplicates(pairs: list) -> dict:
        seen: dict = {}
        for k, v in pairs:
            if k in seen:
                raise VerificationError(f"{what} repeats the field `{k}`")
            seen[k] = v
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise VerificationError(f"{what} is not JSON: {e}") from None


# ---- Merkle tree (RFC 6962 / RFC 9162) -----------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """The Merkle Tree Hash of leaf hashes (RFC 6962 §2.1)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    # Pairing left to right and promoting an odd last node gives the same root as RFC 6962's
    # split at the largest power of two below n.
    while len(level) > 1:
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2. Requires 0 <= index < size."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, path: list[bytes], old_root: bytes, new_root: bytes
) -> bool:
    """RFC 9162 §2.1.4.2. Requires 0 < old_size <= new_size."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the path's first node
        path = [old_root] + list(path)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def _hashes(path: Iterable[str]) -> list[bytes]:
    out = []
    for h in path:
        try:
            b = bytes.fromhex(h)
        except (TypeError, ValueError):
            b = b""
        if len(b) != 32:
            raise VerificationError(f"`{h}` is not a hex SHA-256 hash")
        out.append(b)
    return out


# ---- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A verified signed checkpoint: the log of ``size`` entries has Merkle root ``root``."""

    origin: str
    size: int
    root: bytes
    note: str


def verify_checkpoint(note: str, key: PublicKey) -> Checkpoint:
    """Parses a C2SP signed note and checks the domain key's signature on it."""
    if "\n\n" not in note:
        raise VerificationError("checkpoint is not a signed note")
    body, sigs = note.split("\n\n", 1)
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) != 3:
        raise VerificationError("checkpoint body must have origin, size and root lines")
    origin, size_text, root_text = lines
    if not size_text.isdigit():
        raise VerificationError("checkpoint size is not a number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError:
        root = b""
    if len(root) != 32:
        raise VerificationError("checkpoint root is not a base64 SHA-256 hash")
    verified = False
    for line in sigs.split("\n"):
        if not line.startswith(_EM_DASH + " "):
            continue
        name, _, blob_text = line[2:].partition(" ")
        try:
            blob = base64.b64decode(blob_text, validate=True)
        except ValueError:
            continue
        if name == key.name and len(blob) == 68 and blob[:4] == key.key_id:
            verified = key.verify(body.encode(), blob[4:])
    if not verified:
        raise VerificationError("checkpoint signature is not valid for this public key")
    return Checkpoint(origin, int(size_text), root, note)


# ---- inclusion and consistency proofs -------------------------------------------------------


@dataclass(frozen=True)
class Inclusion:
    """A verified inclusion proof: public entry ``entry`` is entry ``index`` of a log of ``size``."""

    index: int
    size: int
    entry: dict


def verify_inclusion_proof(proof: dict, key: PublicKey) -> Inclusion:
    """Checks an inclusion proof (``GET /v1/audit/proof/inclusion``) offline."""
    if proof.get("kind") != "inclusion":
        raise VerificationError("not an inclusion proof")
    index = proof.get("index")
    line = proof.get("entry")
    if not isinstance(index, int) or not isinstance(line, str):
        raise VerificationError("an inclusion proof carries an integer `index` and an `entry` line")
    cp = verify_checkpoint(proof.get("checkpoint", ""), key)
    entry = _strict_json(line, f"entry {index}")
    if not isinstance(entry, dict) or entry.get("index") != index:
        raise VerificationError(f"entry {index}: the entry says it is entry {entry.get('index')}")
    if not verify_inclusion(leaf_hash(line.encode()), index, cp.size, _hashes(proof.get("path", [])), cp.root):
        raise VerificationError(
            f"entry {index}: the audit path does not lead to the checkpoint's root (tree of {cp.size})"
        )
    return Inclusion(index, cp.size, entry)


def verify_consistency_proof(proof: dict, key: PublicKey, trusted_old: Optional[str] = None) -> tuple[int, int]:
    """Checks that the newer checkpoint's log extends the older one; returns (old size, new size).

    Pass the checkpoint you already hold as ``trusted_old``: the copy inside the proof proves
    nothing about what you saw before.
    """
    if proof.get("kind") != "consistency":
        raise VerificationError("not a consistency proof")
    old = verify_checkpoint(trusted_old or proof.get("old_checkpoint", ""), key)
    new = verify_checkpoint(proof.get("new_checkpoint", ""), key)
    if not verify_consistency(old.size, new.size, _hashes(proof.get("path", [])), old.root, new.root):
        raise VerificationError(
            f"the log of {new.size} entries is NOT an extension of the log of {old.size} entries "
            "(a rewritten or forked history, or a wrong proof)"
        )
    return old.size, new.size


# ---- receipts -------------------------------------------------------------------------------

# ReceiptFacts' fields in their serialised order (crates/veil-audit/src/receipt.rs).
_FACT_FIELDS = (
    "job", "consumer", "dataset", "module_hash", "dataset_commitment", "dataset_version",
    "policy_version", "policy_hash", "manifest_hash", "epsilon_micro", "rho_pico", "delta_femto",
    "result_hash", "log_index", "released_at", "checkpoint", "linked",
)
_LINKED_FIELDS = ("dataset", "dataset_commitment", "dataset_version", "policy_version", "policy_hash")


def _public(entry: dict) -> dict:
    return entry.get("public") if isinstance(entry.get("public"), dict) else {}


def _text(entry: dict, field: str) -> Optional[str]:
    v = _public(entry).get(field)
    return v if isinstance(v, str) else None


def _number(entry: dict, field: str) -> int:
    """A public number; absent numbers are zero (events omit zero charges)."""
    v = _public(entry).get(field)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _job_facts(entries: list[dict], checkpoint: str) -> Optional[dict]:
    """The facts that a job's logged entries establish, or None when they do not fit together."""
    submitted, started, released = entries[:3]
    charged = entries[3] if len(entries) == 4 else None
    kinds = tuple(_text(e, "kind") for e in (submitted, started, released))
    if kinds != ("job_submitted", "job_started", "release_created"):
        return None
    job = _text(submitted, "job")
    if job is None or _text(started, "job") != job or _text(released, "job") != job:
        return None
    linked = None
    if charged is not None:
        if _text(charged, "kind") != "job_charged" or _text(charged, "job") != job:
            return None
        linked = {
            "dataset": _text(charged, "dataset"),
            "dataset_commitment": _text(charged, "dataset_commitment"),
            "dataset_version": max(_number(charged, "dataset_version"), 1),
            "policy_version": _number(charged, "policy_version"),
            "policy_hash": _text(charged, "policy_hash"),
        }
    facts = {
        "job": job,
        "consumer": _text(submitted, "consumer"),
        "dataset": _text(submitted, "dataset"),
        "module_hash": _text(started, "module_hash"),
        "dataset_commitment": _text(started, "dataset_commitment"),
        "dataset_version": max(_number(started, "dataset_version"), 1),
        "policy_version": _number(started, "policy_version"),
        "policy_hash": _text(started, "policy_hash"),
        "manifest_hash": _text(submitted, "manifest_hash"),
        "epsilon_micro": _number(started, "epsilon_micro"),
        "rho_pico": _number(started, "rho_pico"),
        "delta_femto": _number(started, "delta_conversion_femto") + _number(started, "delta_selection_femto"),
        "result_hash": _text(released, "result_hash"),
        "log_index": released.get("index"),
        "released_at": released.get("time"),
        "checkpoint": checkpoint,
        "linked": linked,
    }
    if any(v is None for k, v in facts.items() if k != "linked"):
        return None
    if linked is not None and any(v is None for v in linked.values()):
        return None
    return facts


def _facts_message(facts: dict) -> bytes:
    """The signed message: the context line, then the facts as serde writes ``ReceiptFacts``."""
    ordered: dict = {}
    for field in _FACT_FIELDS:
        if field not in facts:
            continue
        value = facts[field]
        if field == "dataset_version" and value == 1:
            continue  # skipped when 1 (datasets never replaced)
        if field == "linked":
            if value is None:
                continue
            value = {f: value.get(f) for f in _LINKED_FIELDS}
        ordered[field] = value
    return _RECEIPT_CONTEXT + _canonical(ordered)


def _normalised_facts(facts: dict) -> dict:
    """Facts as the derivation writes them (defaults filled in), for comparison."""
    out = {f: facts.get(f) for f in _FACT_FIELDS}
    if "dataset_version" not in facts:
        out["dataset_version"] = 1
    return out


def verify_receipt(receipt: dict, key: PublicKey) -> dict:
    """Checks a job receipt offline, as ``veil receipt verify`` does; returns its facts.

    The signature over the facts, that the result hashes to the signed result hash, each inclusion
    proof against the receipt's checkpoint, and that the proven log entries say what the facts say.
    """
    facts = receipt.get("facts")
    if not isinstance(facts, dict) or set(facts) - set(_FACT_FIELDS):
        raise VerificationError("the receipt's facts are missing or carry unknown fields")
    try:
        signature = bytes.fromhex(receipt.get("signature", ""))
    except ValueError:
        signature = b""
    if not key.verify(_facts_message(facts), signature):
        raise VerificationError("the receipt's signature is not valid for this key")
    result = receipt.get("result")
    if not isinstance(result, str) or hashlib.sha256(result.encode()).hexdigest() != facts.get("result_hash"):
        raise VerificationError("the result does not hash to the receipt's result hash")
    proofs = receipt.get("proofs")
    expected = 3 + (facts.get("linked") is not None)
    if not isinstance(proofs, list) or len(proofs) != expected:
        raise VerificationError(
            f"this receipt carries {expected} inclusion proofs (three, and a fourth for a job over "
            f"a link), not {len(proofs) if isinstance(proofs, list) else 0}"
        )
    entries = []
    for proof in proofs:
        if not isinstance(proof, dict) or proof.get("checkpoint") != facts.get("checkpoint"):
            raise VerificationError("a proof leads to another checkpoint than the receipt's")
        entries.append(verify_inclusion_proof(proof, key).entry)
    derived = _job_facts(entries, facts["checkpoint"])
    if derived != _normalised_facts(facts):
        raise VerificationError(
            "a logged entry disagrees with the receipt (job, module, data, policy, charge or result)",
            entry=entries[2].get("index"),
        )
    return facts


# ---- audit exports --------------------------------------------------------------------------

# Which event fields an entry's public part shows (crates/veil-audit/src/entry.rs,
# `public_fields`); every other field is sealed under the entry's commitment.
_PUBLIC_FIELDS: dict[str, tuple[str, ...]] = {
    "log_created": ("public_key",),
    "key_rotated": ("new_public_key", "fingerprint"),
    "dataset_registered": ("dataset", "content_commitment", "schema_hash", "version"),
    "policy_suspended": ("dataset", "dataset_version"),
    "dataset_removed": ("dataset",),
    "link_evaluated": ("holder", "elements"),
    "link_proposed": ("link", "left_dataset", "right_dataset"),
    "link_decided": ("link", "accepted"),
    "link_revoked": ("link",),
    "policy_set": ("dataset", "version", "policy_hash"),
    "unit_count_published": ("dataset", "policy_version", "epsilon_micro", "noisy_units"),
    "job_submitted": ("job", "consumer", "dataset", "module_hash", "manifest_hash", "epsilon_micro"),
    "job_checked": ("consumer", "dataset", "module_hash", "manifest_hash", "epsilon_micro"),
    "job_started": (
        "job", "consumer", "dataset", "dataset_commitment", "dataset_version", "policy_version",
        "policy_hash", "module_hash", "epsilon_micro", "rho_pico", "delta_conversion_femto",
        "delta_selection_femto", "public_tables",
    ),
    "job_charged": (
        "job", "dataset", "dataset_commitment", "dataset_version", "policy_version", "policy_hash",
        "epsilon_micro", "rho_pico", "delta_conversion_femto", "delta_selection_femto",
    ),
    "release_created": ("job", "result_hash"),
    "job_refused": ("job",),
    "job_approved": ("job",),
    "job_rejected": ("job",),
    "job_finished": ("job",),
    "release_denied": ("job",),
}


@dataclass(frozen=True)
class VerifiedLog:
    """What a verified export established."""

    entries: int
    root: bytes
    current_key: PublicKey
    rotations: int


def _public_part(entry: dict) -> dict:
    """An exported entry's public part (with its commitment to the sealed rest), as the tree hashes it."""
    event = entry["event"]
    kind = event.get("kind", "")
    shown = _PUBLIC_FIELDS.get(kind, ())
    public = _sorted({k: v for k, v in event.items() if k == "kind" or k in shown})
    sealed = _sorted({k: v for k, v in event.items() if k != "kind" and k not in shown})
    try:
        salt = bytes.fromhex(entry["salt"])
    except ValueError:
        salt = b""
    sealed_part = _canonical({"recorded_at": entry["recorded_at"], "fields": sealed})
    commitment = hashlib.sha256(_SEAL_CONTEXT + salt + sealed_part).hexdigest()
    return {
        "v": entry["v"],
        "index": entry["index"],
        "time": entry["time"],
        "prev": entry["prev"],
        "public": public,
        "sealed": commitment,
        "sig": entry["sig"],
    }


def _entry_signature_holds(public: dict, key: PublicKey) -> bool:
    signed = {k: public[k] for k in ("v", "index", "time", "prev", "public", "sealed")}
    try:
        sig = bytes.fromhex(public["sig"])
    except ValueError:
        return False
    return key.verify(_ENTRY_CONTEXT + _canonical(signed), sig)


_ENTRY_KEYS = {"v", "index", "time", "prev", "event", "recorded_at", "salt", "sig"}


def verify_export(text: str, first_key: PublicKey) -> VerifiedLog:
    """Verifies an exported log (``GET /v1/audit/export``) as ``veil audit verify --log`` does.

    ``first_key`` is the key you trust: the log's first. A ``key_rotated`` entry, signed by the
    key in force, hands over to the key it names. Raises naming the first bad entry.
    """
    key, rotations = first_key, 0
    leaves: list[bytes] = []
    checkpoint: Optional[Checkpoint] = None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        expected = len(leaves)
        if checkpoint is not None:
            raise VerificationError(f"line {lineno}: content after the checkpoint", entry=expected)
        value = _strict_json(line, f"line {lineno}")
        if isinstance(value, dict) and "checkpoint" in value:
            checkpoint = verify_checkpoint(str(value["checkpoint"]), key)
            continue
        if not isinstance(value, dict) or set(value) != _ENTRY_KEYS or not isinstance(value["event"], dict):
            raise VerificationError(f"line {lineno} is not a valid entry", entry=expected)
        if value["index"] != expected:
            how = "missing: line {} holds entry {} instead (deleted or reordered)" if value["index"] > expected \
                else "out of order: line {} holds entry {} (reordered or duplicated)"
            raise VerificationError(how.format(lineno, value["index"]), entry=expected)
        prev = leaves[-1] if leaves else bytes(32)
        if value["prev"] != prev.hex():
            raise VerificationError(
                "does not chain to the previous entry (an entry before it was changed, removed or reordered)",
                entry=expected,
            )
        public = _public_part(value)
        if value["v"] != _ENTRY_VERSION or not _entry_signature_holds(public, key):
            raise VerificationError(
                "signature does not match the entry's contents (the entry was altered, or signed "
                "by a key the chain of hand-overs does not lead to)",
                entry=expected,
            )
        if value["event"].get("kind") == "key_rotated":
            key = PublicKey.parse(str(value["event"].get("new_public_key", "")))
            rotations += 1
        leaves.append(leaf_hash(_canonical(public)))
    if checkpoint is None:
        raise VerificationError("no checkpoint line: cannot tell whether entries were cut off")
    if checkpoint.size != len(leaves):
        raise VerificationError(
            f"checkpoint covers {checkpoint.size} entries but the log has {len(leaves)} (truncated or extended)",
            entry=min(len(leaves), checkpoint.size),
        )
    root = merkle_root(leaves)
    if root != checkpoint.root:
        raise VerificationError("Merkle root of the entries differs from the signed checkpoint")
    return VerifiedLog(len(leaves), root, key, rotations)
