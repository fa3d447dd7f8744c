"""The client's RFC 6962 code against the certificate-transparency test vectors (offline)."""

import hashlib

from veil_client import verify as v

# The RFC 6962 reference tree's leaves and the roots of its first 1..8 leaves (the same vectors
# crates/veil-merkle checks).
LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def leaves():
    return [v.leaf_hash(leaf) for leaf in LEAVES]


def test_roots_match_the_rfc6962_vectors():
    assert v.merkle_root([]) == hashlib.sha256(b"").digest()
    for n, want in enumerate(ROOTS, start=1):
        assert v.merkle_root(leaves()[:n]).hex() == want, f"tree of {n}"


def audit_path(tree, index):
    """RFC 6962 §2.1.1, straight from the definition (a reference for the verifier)."""
    if len(tree) <= 1:
        return []
    k = 1 << ((len(tree) - 1).bit_length() - 1)
    if index < k:
        return audit_path(tree[:k], index) + [v.merkle_root(tree[k:])]
    return audit_path(tree[k:], index - k) + [v.merkle_root(tree[:k])]


def test_inclusion_proofs_verify_and_others_do_not():
    tree = [v.leaf_hash(i.to_bytes(4, "little")) for i in range(40)]
    for n in range(1, len(tree) + 1):
        root = v.merkle_root(tree[:n])
        for i in range(n):
            path = audit_path(tree[:n], i)
            assert v.verify_inclusion(tree[i], i, n, path, root), (i, n)
            assert not v.verify_inclusion(v.leaf_hash(b"not in the tree"), i, n, path, root)
    assert not v.verify_inclusion(tree[0], 3, 3, [], tree[0])


def test_consistency_vectors_verify_and_tampered_paths_do_not():
    ls = leaves()
    for m, n, path in CONSISTENCY:
        hashes = [bytes.fromhex(h) for h in path]
        old, new = v.merkle_root(ls[:m]), v.merkle_root(ls[:n])
        assert v.verify_consistency(m, n, hashes, old, new), (m, n)
        bad = [hashlib.sha256(hashes[0]).digest()] + hashes[1:]
        assert not v.verify_consistency(m, n, bad, old, new), (m, n)
        assert not v.verify_consistency(m, n, hashes, old, v.merkle_root(ls[: n - 1])), (m, n)
    assert v.verify_consistency(1, 1, [], ls[0], ls[0])
    assert not v.verify_consistency(0, 3, [], hashlib.sha256(b"").digest(), v.merkle_root(ls[:3]))
