//! Join tokens: how two data holders link their records of one person without anyone — the
//! other holder, the consumer, the domain's operator — seeing an identifier.
//!
//! # Core concepts
//! - A holder's client [normalises](normalise) each identifier (a national ID, a phone number),
//!   hashes it to a point of the ristretto255 group and **blinds** it with a fresh random
//!   scalar ([`Request`]): the points it sends are uniformly random, whatever the identifiers.
//! - The domain multiplies each point by its secret [`OprfKey`] and returns them with one
//!   [`Proof`] for the whole batch that it used the key whose commitment it publishes
//!   ([`PublicKey`]) — a batched discrete-log-equality (DLEQ) proof as in RFC 9497's verifiable
//!   mode ([`OprfKey::evaluate`]).
//! - The client checks the proof, removes the blind and hashes the result with the identifier
//!   into a [`Token`] ([`Request::finish`]), which it uploads in the identifier's place. The same
//!   identifier gives the same token for every holder of the domain; without the domain's key no
//!   one can compute a token, and a token reveals nothing about its identifier.
//!
//! ```
//! use rand::SeedableRng;
//! use veil_link::{OprfKey, Request, normalise};
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let key = OprfKey::generate(&mut rng); // the domain's, kept beside its signing key
//! let ids = [normalise("AB-12 34").unwrap(), normalise("ab1234").unwrap()];
//! let request = Request::new(&ids, &mut rng).unwrap(); // the holder's client
//! let evaluation = key.evaluate(request.blinded(), &mut rng).unwrap(); // the domain
//! let tokens = request.finish(&evaluation, &key.public_key()).unwrap(); // the client again
//! assert_eq!(tokens[0], tokens[1], "one identifier, written two ways: one token");
//! ```
//!
//! # The protocol, for a batch of identifiers `x_i` (all arithmetic in ristretto255)
//! ```text
//! client:  P_i = H2G(x_i);  r_i ← random scalar;  B_i = 2·(P_i + r_i·G)       send B_1..B_n
//! domain:  Z_i = k·B_i;  π = DLEQ(G, K = k·G; M, k·M) over the composite M = Σ d_i·B_i
//! client:  check π (Z = Σ d_i·Z_i);  N_i = Z_i − 2r_i·K = 2k·P_i;  token_i = H(x_i, 2·N_i)
//! ```
//! The doublings cost nothing and make every encoding cheap: ristretto255 encodes `2·Q` for a
//! whole batch of points `Q` with one shared field inversion, where encoding each point alone
//! costs an inversion per point. So the client sends `2·(P + r·G)`, the domain computes
//! `(k/2)·B` and encodes its double, and the token hashes the encoding of `2·N`; since the group
//! has prime order, doubling is a bijection and the tokens are still a function of `k·P` alone.
//! Blinding is additive (`P + r·G`) rather than RFC 9497's multiplicative `r·P`: both make the
//! sent point uniform, but removing an additive blind needs `r·K`, a multiplication by a fixed
//! point the client precomputes once per batch, where `r⁻¹·Z` costs a full variable-base one. It
//! needs the client to know `K`, which verifiable mode requires anyway; the proof binds every
//! `Z_i` to that `K`. The composite weights `d_i` are 128-bit hashes of the whole batch (its
//! encodings as sent), so a domain cannot make a wrong `Z_i` cancel out in the composite except
//! with probability about 2⁻¹²⁸, and the composites cost half what full-width weights would.
//!
//! Nothing here does I/O; the engine keeps the key and serves evaluations, the CLI runs the
//! client side.
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use rand::CryptoRng;
use sha2::{Digest, Sha512};

/// Names the protocol and its version in every hash, so tokens of another protocol or version
/// can never collide with these.
pub const SUITE: &[u8] = b"veil-link-v1 ristretto255-SHA512";
/// Most identifiers in one request: a batch's proof covers all of them.
pub const MAX_BATCH: usize = 10_000;
/// Longest identifier, in bytes after normalisation.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

const HASH_TO_GROUP: &[u8] = b"hash-to-group";
const COMPOSITE_SEED: &[u8] = b"composite-seed";
const COMPOSITE_WEIGHT: &[u8] = b"composite-weight";
const CHALLENGE: &[u8] = b"challenge";
const FINALIZE: &[u8] = b"finalize";

/// What went wrong, by kind; each says which element or what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// An element is not 32 bytes of hex encoding a canonical ristretto255 point other than the
    /// identity.
    #[error(
        "element {index} is not a ristretto255 point: send 64 hex digits of a canonical \
         encoding, not the identity"
    )]
    BadElement { index: usize },
    /// An evaluation does not answer the request it is applied to.
    #[error("the evaluation has {got} elements for {expected} sent")]
    CountMismatch { expected: usize, got: usize },
    /// The domain's proof does not verify against the public key: the evaluation was not made
    /// with that key (or was altered on the way). No token may be derived from it.
    #[error(
        "the domain's proof does not verify against its published link key: the evaluation \
         was not made with that key; check the key's fingerprint and try again"
    )]
    ProofMismatch,
    /// A batch larger than [`MAX_BATCH`], or empty.
    #[error("a batch holds 1 to {MAX_BATCH} identifiers, not {got}")]
    BatchSize { got: usize },
    /// An identifier that normalises to nothing, or longer than [`MAX_IDENTIFIER_BYTES`].
    #[error(
        "identifier {index} is {len} bytes after normalisation; it must hold 1 to \
         {MAX_IDENTIFIER_BYTES}"
    )]
    BadIdentifier { index: usize, len: usize },
    /// Key material that is not a canonical, non-zero scalar (or a point that is not one).
    #[error("bad link key: {0}")]
    BadKey(&'static str),
    /// A proof that is not 128 hex digits of two canonical scalars.
    #[error("the proof is not 128 hex digits of two canonical scalars")]
    BadProof,
}

pub type Result<T> = std::result::Result<T, LinkError>;

/// The one normalisation every holder applies before tokenising, so that the same identifier
/// written two ways gives one token: surrounding and inner whitespace and the separators
/// `- . / ( )` are removed and ASCII letters lowercased. Other characters stay as they are
/// (holders of non-ASCII identifiers must agree on their Unicode form). `None` when nothing is
/// left: an empty identifier links to nothing.
pub fn normalise(identifier: &str) -> Option<String> {
    let kept: String = identifier
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '/' | '(' | ')'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// A group element on the wire: 32 bytes, hex. Keeps its encoding beside the point, so that
/// hashing a batch never encodes a point twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    point: RistrettoPoint,
    bytes: [u8; 32],
}

impl Element {
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The doubles of `halves`, each with its encoding, encoded in one batch.
    fn doubles_of(halves: &[RistrettoPoint]) -> Vec<Element> {
        RistrettoPoint::double_and_compress_batch(halves)
            .into_iter()
            .zip(halves)
            .map(|(bytes, half)| Element {
                point: half + half,
                bytes: bytes.to_bytes(),
            })
            .collect()
    }

    /// Decodes element `index` of a batch. Requires a canonical encoding of a point other than
    /// the identity (which would carry no blind).
    pub fn from_hex(text: &str, index: usize) -> Result<Element> {
        let bad = LinkError::BadElement { index };
        let bytes: [u8; 32] = hex::decode(text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(bad.clone())?;
        let point = CompressedRistretto(bytes).decompress().ok_or(bad.clone())?;
        if point == RistrettoPoint::identity() {
            return Err(bad);
        }
        Ok(Element { point, bytes })
    }
}

/// The domain's secret OPRF key `k`.
pub struct OprfKey {
    k: Scalar,
}

impl OprfKey {
    /// A fresh key from a CSPRNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> OprfKey {
        OprfKey {
            k: random_scalar(rng),
        }
    }

    /// A key as [`OprfKey::to_bytes`] stored it. Requires a canonical, non-zero scalar.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<OprfKey> {
        let k: Option<Scalar> = Scalar::from_canonical_bytes(bytes).into();
        match k {
            Some(k) if k != Scalar::ZERO => Ok(OprfKey { k }),
            _ => Err(LinkError::BadKey("not a canonical non-zero scalar")),
        }
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.k.to_bytes()
    }

    /// The published commitment `K = k·G` that evaluations are proved against.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(&self.k * RISTRETTO_BASEPOINT_TABLE)
    }

    /// Evaluates a batch of blinded elements and proves it used this key. Requires 1 to
    /// [`MAX_BATCH`] elements.
    pub fn evaluate<R: CryptoRng + ?Sized>(
        &self,
        blinded: &[Element],
        rng: &mut R,
    ) -> Result<Evaluation> {
        check_batch(blinded.len())?;
        // Z_i = k·B_i, computed as the double of (k/2)·B_i so the batch is encoded at once.
        let half_k = self.k * Scalar::from(2u8).invert();
        let halves: Vec<RistrettoPoint> = blinded.iter().map(|b| half_k * b.point).collect();
        let evaluated = Element::doubles_of(&halves);
        let public = self.public_key();
        let weights = composite_weights(&public, blinded, &evaluated);
        let m = RistrettoPoint::vartime_multiscalar_mul(&weights, blinded.iter().map(|b| b.point));
        let proof = self.prove(&public, &m, &(self.k * m), rng);
        Ok(Evaluation {
            elements: evaluated,
            proof,
        })
    }

    /// A Chaum–Pedersen proof that `log_G K = log_M Z` (both `k`), made non-interactive by
    /// hashing the statement and the commitments (Fiat–Shamir).
    fn prove<R: CryptoRng + ?Sized>(
        &self,
        public: &PublicKey,
        m: &RistrettoPoint,
        z: &RistrettoPoint,
        rng: &mut R,
    ) -> Proof {
        let t = random_scalar(rng);
        let a1 = &t * RISTRETTO_BASEPOINT_TABLE;
        let a2 = t * m;
        let c = challenge(&public.0, m, z, &a1, &a2);
        Proof {
            c,
            s: t - c * self.k,
        }
    }
}

/// The domain's published link key `K = k·G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(RistrettoPoint);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.compress().as_bytes())
    }

    /// Requires a canonical encoding of a point other than the identity.
    pub fn from_hex(text: &str) -> Result<PublicKey> {
        Element::from_hex(text, 0)
            .map(|e| PublicKey(e.point))
            .map_err(|_| LinkError::BadKey("not 64 hex digits of a ristretto255 point"))
    }
}

/// A batch's proof: the challenge `c` and response `s`, 128 hex digits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    c: Scalar,
    s: Scalar,
}

impl Proof {
    pub fn to_hex(&self) -> String {
        let mut bytes = self.c.to_bytes().to_vec();
        bytes.extend_from_slice(&self.s.to_bytes());
        hex::encode(bytes)
    }

    /// Requires 128 hex digits of two canonical scalars.
    pub fn from_hex(text: &str) -> Result<Proof> {
        let bytes = hex::decode(text).map_err(|_| LinkError::BadProof)?;
        let (c, s) = match bytes.len() {
            64 => bytes.split_at(32),
            _ => return Err(LinkError::BadProof),
        };
        let scalar = |b: &[u8]| -> Result<Scalar> {
            let array: [u8; 32] = b.try_into().map_err(|_| LinkError::BadProof)?;
            Option::from(Scalar::from_canonical_bytes(array)).ok_or(LinkError::BadProof)
        };
        Ok(Proof {
            c: scalar(c)?,
            s: scalar(s)?,
        })
    }
}

/// The domain's answer to a batch: the evaluated elements, in order, and the batch's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub elements: Vec<Element>,
    pub proof: Proof,
}

/// A join token: 32 bytes, shown as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token([u8; 32]);

impl Token {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A holder's batch in flight: the identifiers and their blinds, kept by the client until the
/// domain answers.
pub struct Request {
    inputs: Vec<Vec<u8>>,
    blinds: Vec<Scalar>,
    blinded: Vec<Element>,
}

impl Request {
    /// Hashes and blinds `identifiers`, each already [normalised](normalise). Requires 1 to
    /// [`MAX_BATCH`] identifiers of 1 to [`MAX_IDENTIFIER_BYTES`] bytes.
    pub fn new<S: AsRef<str>, R: CryptoRng + ?Sized>(
        identifiers: &[S],
        rng: &mut R,
    ) -> Result<Request> {
        check_batch(identifiers.len())?;
        let mut inputs = Vec::with_capacity(identifiers.len());
        let mut blinds = Vec::with_capacity(identifiers.len());
        let mut halves = Vec::with_capacity(identifiers.len());
        for (index, id) in identifiers.iter().enumerate() {
            let input = id.as_ref().as_bytes();
            if input.is_empty() || input.len() > MAX_IDENTIFIER_BYTES {
                return Err(LinkError::BadIdentifier {
                    index,
                    len: input.len(),
                });
            }
            let r = random_scalar(rng);
            halves.push(hash_to_group(input) + &r * RISTRETTO_BASEPOINT_TABLE);
            inputs.push(input.to_vec());
            blinds.push(r);
        }
        Ok(Request {
            inputs,
            blinds,
            blinded: Element::doubles_of(&halves),
        })
    }

    /// The elements to send to the domain, in the identifiers' order.
    pub fn blinded(&self) -> &[Element] {
        &self.blinded
    }

    /// Verifies the domain's evaluation against its published `key` and derives the tokens, in
    /// the identifiers' order. A proof that fails yields no token at all.
    pub fn finish(self, evaluation: &Evaluation, key: &PublicKey) -> Result<Vec<Token>> {
        if evaluation.elements.len() != self.blinded.len() {
            return Err(LinkError::CountMismatch {
                expected: self.blinded.len(),
                got: evaluation.elements.len(),
            });
        }
        verify(key, &self.blinded, &evaluation.elements, &evaluation.proof)?;
        // N_i = Z_i − 2r_i·K = 2k·P_i; the tokens hash the encodings of 2·N_i, made at once.
        let key_table = RistrettoBasepointTable::create(&key.0);
        let unblinded: Vec<RistrettoPoint> = self
            .blinds
            .iter()
            .zip(&evaluation.elements)
            .map(|(r, z)| z.point - &(r + r) * &key_table)
            .collect();
        let encoded = RistrettoPoint::double_and_compress_batch(&unblinded);
        Ok(self
            .inputs
            .iter()
            .zip(&encoded)
            .map(|(input, n)| finalize(input, n.as_bytes()))
            .collect())
    }
}

/// Checks a batch's proof: with `M = Σ d_i·B_i` and `Z = Σ d_i·Z_i`, recomputes the
/// commitments `A1 = s·G + c·K`, `A2 = s·M + c·Z` and requires the challenge to match.
fn verify(
    key: &PublicKey,
    blinded: &[Element],
    evaluated: &[Element],
    proof: &Proof,
) -> Result<()> {
    let weights = composite_weights(key, blinded, evaluated);
    let m = RistrettoPoint::vartime_multiscalar_mul(&weights, blinded.iter().map(|b| b.point));
    let z = RistrettoPoint::vartime_multiscalar_mul(&weights, evaluated.iter().map(|z| z.point));
    let a1 = RistrettoPoint::vartime_double_scalar_mul_basepoint(&proof.c, &key.0, &proof.s);
    let a2 = RistrettoPoint::vartime_multiscalar_mul([proof.s, proof.c], [m, z]);
    if challenge(&key.0, &m, &z, &a1, &a2) == proof.c {
        Ok(())
    } else {
        Err(LinkError::ProofMismatch)
    }
}

/// The weights `d_i` of the composites `M = Σ d_i·B_i`, `Z = Σ d_i·Z_i`: 128-bit hashes of a
/// seed that commits to the key and every element of the batch as sent, so that no element can
/// be chosen after the weights are known.
fn composite_weights(key: &PublicKey, blinded: &[Element], evaluated: &[Element]) -> Vec<Scalar> {
    let mut seed = labelled(COMPOSITE_SEED);
    seed.update(key.0.compress().as_bytes());
    seed.update((blinded.len() as u64).to_be_bytes());
    for (b, z) in blinded.iter().zip(evaluated) {
        seed.update(b.bytes);
        seed.update(z.bytes);
    }
    let seed = seed.finalize();
    (0..blinded.len() as u64)
        .map(|i| {
            let mut h = labelled(COMPOSITE_WEIGHT);
            h.update(seed);
            h.update(i.to_be_bytes());
            let mut weight = [0u8; 32];
            weight[..16].copy_from_slice(&h.finalize()[..16]);
            Scalar::from_bytes_mod_order(weight)
        })
        .collect()
}

/// The Fiat–Shamir challenge over the statement `(G, K, M, Z)` and the commitments.
fn challenge(
    key: &RistrettoPoint,
    m: &RistrettoPoint,
    z: &RistrettoPoint,
    a1: &RistrettoPoint,
    a2: &RistrettoPoint,
) -> Scalar {
    let mut h = labelled(CHALLENGE);
    for p in [key, m, z, a1, a2] {
        h.update(p.compress().as_bytes());
    }
    Scalar::from_hash(h)
}

/// `H2G(x)`: SHA-512 of the suite, a label and `x` (length-prefixed), mapped to the group by
/// ristretto255's one-way map (two Elligator images added), so nobody knows its discrete log.
fn hash_to_group(input: &[u8]) -> RistrettoPoint {
    let mut h = labelled(HASH_TO_GROUP);
    h.update((input.len() as u64).to_be_bytes());
    h.update(input);
    RistrettoPoint::from_hash(h)
}

/// The token of `x`, given the encoding of `4k·H2G(x)` (see the module docs): the first 32
/// bytes of SHA-512 over the suite, `x` and that encoding, as in RFC 9497's Finalize.
fn finalize(input: &[u8], encoded: &[u8; 32]) -> Token {
    let mut h = labelled(FINALIZE);
    h.update((input.len() as u64).to_be_bytes());
    h.update(input);
    h.update(encoded);
    let digest = h.finalize();
    let mut token = [0u8; 32];
    token.copy_from_slice(&digest[..32]);
    Token(token)
}

/// SHA-512 started with the suite and a label, each length-prefixed.
fn labelled(label: &[u8]) -> Sha512 {
    let mut h = Sha512::new();
    for part in [SUITE, label] {
        h.update((part.len() as u16).to_be_bytes());
        h.update(part);
    }
    h
}

/// A uniform scalar: 64 random bytes reduced modulo the group order (bias below 2⁻²⁵⁰).
fn random_scalar<R: CryptoRng + ?Sized>(rng: &mut R) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn check_batch(n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH {
        return Err(LinkError::BatchSize { got: n });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
