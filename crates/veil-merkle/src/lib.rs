//! RFC 6962 Merkle tree hashing, with no I/O.
//!
//! Veil's audit log hashes each entry into a leaf and commits to the whole log with the Merkle Tree
//! Hash (MTH) of RFC 6962 §2.1: leaves are `SHA-256(0x00 || entry)`, interior nodes
//! `SHA-256(0x01 || left || right)`, and a tree of `n` leaves splits at the largest power of two
//! smaller than `n`. The domain-separation bytes keep a leaf from being passed off as a node.
//!
//! Inclusion proofs (RFC 6962 §2.1.1, verified as in RFC 9162 §2.1.3.2) let a reviewer check one entry
//! against a signed checkpoint without the rest of the log. Consistency proofs (RFC 6962 §2.1.2,
//! verified as in RFC 9162 §2.1.4.2) show that a later checkpoint extends an earlier one — that the
//! log was only appended to — and so expose a forked or rewritten history.
#![forbid(unsafe_code)]

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash of an empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The Merkle Tree Hash of a list of leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path for leaf `index` in a tree of `leaves` (RFC 6962 §2.1.1), bottom-up.
/// Returns `None` when `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    collect_path(leaves, index, &mut path);
    Some(path)
}

fn collect_path(leaves: &[Hash], index: usize, path: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if index < k {
        collect_path(&leaves[..k], index, path);
        path.push(root(&leaves[k..]));
    } else {
        collect_path(&leaves[k..], index - k, path);
        path.push(root(&leaves[..k]));
    }
}

/// Checks an inclusion proof for `leaf` at `index` in a tree of `size` leaves with root `expected`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    expected: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == expected
}

/// The consistency proof between the tree of the first `old_size` leaves and the tree of all
/// `leaves` (RFC 6962 §2.1.2, `PROOF(m, D[n])`). Returns `None` unless `0 < old_size <= n`.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    if old_size == 0 || old_size > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(old_size, leaves, true, &mut proof);
    Some(proof)
}

/// `SUBPROOF(m, D[n], b)` of RFC 6962 §2.1.2.
fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Checks that the tree of `new_size` leaves with root `new_root` extends the tree of `old_size`
/// leaves with root `old_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and equal
/// roots; an empty old tree is not a meaningful claim and fails.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    // When the old tree is a complete subtree, its root is the first node of the path.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &fr == old_root && &sr == new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of the RFC 6962 test vectors used by certificate-transparency implementations.
    fn vector_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            (0x60..=0x6f).collect(),
        ]
    }

    const VECTOR_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn rfc6962_roots() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let leaves: Vec<Hash> = vector_leaves().iter().map(|l| leaf_hash(l)).collect();
        for (n, want) in VECTOR_ROOTS.iter().enumerate() {
            assert_eq!(
                hex::encode(root(&leaves[..=n])),
                *want,
                "tree of {} leaves",
                n + 1
            );
        }
    }

    /// Naive reference: hash level by level, promoting a lone right node unchanged. For RFC 6962
    /// trees this gives the same root as the recursive split definition.
    fn naive_root(leaves: &[Hash]) -> Hash {
        if leaves.is_empty() {
            return empty_root();
        }
        let mut level = leaves.to_vec();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| {
                    if pair.len() == 2 {
                        node_hash(&pair[0], &pair[1])
                    } else {
                        pair[0]
                    }
                })
                .collect();
        }
        level[0]
    }

    #[test]
    fn matches_naive_reference_and_proofs_verify() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for n in 0..=leaves.len() {
            let tree = &leaves[..n];
            let r = root(tree);
            assert_eq!(r, naive_root(tree), "size {n}");
            for i in 0..n {
                let proof = inclusion_proof(tree, i).unwrap();
                assert!(
                    verify_inclusion(&tree[i], i as u64, n as u64, &proof, &r),
                    "{i} in {n}"
                );
                // A proof for one leaf must not vouch for another leaf.
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(&other, i as u64, n as u64, &proof, &r));
            }
        }
        assert!(inclusion_proof(&leaves[..3], 3).is_none());
    }

    /// Consistency proofs of the certificate-transparency reference tree (RFC 6962 vectors).
    #[test]
    fn rfc6962_consistency_vectors() {
        let leaves: Vec<Hash> = vector_leaves().iter().map(|l| leaf_hash(l)).collect();
        let cases: [(usize, usize, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases {
            let proof = consistency_proof(&leaves[..n], m).unwrap();
            let got: Vec<String> = proof.iter().map(hex::encode).collect();
            assert_eq!(got, want, "PROOF({m}, D[{n}])");
            assert!(verify_consistency(
                m as u64,
                n as u64,
                &proof,
                &root(&leaves[..m]),
                &root(&leaves[..n])
            ));
        }
    }

    #[test]
    fn consistency_proofs_verify_and_forks_do_not() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for n in 1..=leaves.len() {
            let new_root = naive_root(&leaves[..n]);
            for m in 1..=n {
                let old_root = naive_root(&leaves[..m]);
                let proof = consistency_proof(&leaves[..n], m).unwrap();
                assert!(
                    verify_consistency(m as u64, n as u64, &proof, &old_root, &new_root),
                    "{m} -> {n}"
                );
                // A history that rewrote any of the first m entries is not consistent.
                let mut forked = leaves[..n].to_vec();
                forked[(m - 1) / 2] = leaf_hash(b"rewritten");
                let forked_root = naive_root(&forked);
                assert!(
                    !verify_consistency(m as u64, n as u64, &proof, &old_root, &forked_root),
                    "fork {m} -> {n}"
                );
                // Nor is a tampered proof. (Sizes are bound by the signed checkpoints, not by the path.)
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_consistency(
                        m as u64, n as u64, &bad, &old_root, &new_root
                    ));
                }
            }
        }
        assert!(consistency_proof(&leaves[..3], 0).is_none());
        assert!(consistency_proof(&leaves[..3], 4).is_none());
        let r = root(&leaves[..3]);
        assert!(!verify_consistency(0, 3, &[], &empty_root(), &r));
        assert!(!verify_consistency(3, 3, &[r], &r, &r));
    }
}
