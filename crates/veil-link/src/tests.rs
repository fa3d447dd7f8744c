use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Runs the whole protocol for `ids` under `key`, with the client's randomness from `seed`.
fn tokens(key: &OprfKey, ids: &[&str], seed: u64) -> Vec<Token> {
    let mut client = rng(seed);
    let request = Request::new(ids, &mut client).unwrap();
    let evaluation = key.evaluate(request.blinded(), &mut rng(seed + 1)).unwrap();
    request.finish(&evaluation, &key.public_key()).unwrap()
}

fn key(byte: u8) -> OprfKey {
    let mut bytes = [0u8; 32];
    bytes[0] = byte;
    OprfKey::from_bytes(bytes).unwrap()
}

#[test]
fn one_identifier_gives_one_token_for_every_holder() {
    let k = key(7);
    let first = tokens(&k, &["19450101-1234", "07700900123"], 1);
    let second = tokens(&k, &["07700900123", "19450101-1234"], 99);
    assert_eq!(first[0], second[1]);
    assert_eq!(first[1], second[0]);
    assert_ne!(
        first[0], first[1],
        "different identifiers, different tokens"
    );
    let other = tokens(&key(8), &["19450101-1234"], 1);
    assert_ne!(other[0], first[0], "another domain key, other tokens");
}

/// Tokens must never change between versions of Veil: linked datasets registered earlier would
/// stop matching. These vectors pin the protocol (suite, hashes, finalisation).
#[test]
fn tokens_match_the_pinned_vectors() {
    let k = key(7);
    assert_eq!(
        k.public_key().to_hex(),
        "44f53520926ec81fbd5a387845beb7df85a96a24ece18738bdcfa6a7822a176d",
    );
    for (id, token) in [
        (
            "19450101-1234",
            "a41d00c3508fa248b55a6839342bd8224d28e04a2aa717771faf76847fa5ef21",
        ),
        (
            "a",
            "66c606e349808dfe72abf28328a4ef67c1848f76d54124238f6b841ee643acc8",
        ),
    ] {
        assert_eq!(tokens(&k, &[id], 3)[0].to_hex(), token, "{id}");
    }
}

#[test]
fn the_domain_sees_only_fresh_uniform_points() {
    let mut client = rng(5);
    let a = Request::new(&["same"], &mut client).unwrap();
    let b = Request::new(&["same"], &mut client).unwrap();
    assert_ne!(
        a.blinded()[0],
        b.blinded()[0],
        "blinds are fresh per request"
    );
    assert_ne!(
        a.blinded()[0].point,
        hash_to_group(b"same"),
        "never the bare hash"
    );
}

#[test]
fn a_proof_binds_the_evaluation_to_the_published_key() {
    let k = key(7);
    let request = Request::new(&["x1", "x2", "x3"], &mut rng(1)).unwrap();
    let good = k.evaluate(request.blinded(), &mut rng(2)).unwrap();
    // Another key's evaluation, checked against the published key.
    let wrong_key = key(9).evaluate(request.blinded(), &mut rng(2)).unwrap();
    let again = |r: &Request| Request {
        inputs: r.inputs.clone(),
        blinds: r.blinds.clone(),
        blinded: r.blinded.clone(),
    };
    assert_eq!(
        again(&request).finish(&wrong_key, &k.public_key()),
        Err(LinkError::ProofMismatch)
    );
    // The right evaluation against a wrong published key.
    assert_eq!(
        again(&request).finish(&good, &key(9).public_key()),
        Err(LinkError::ProofMismatch)
    );
    // One element altered, or two swapped.
    let mut altered = good.clone();
    altered.elements[1] = altered.elements[0];
    assert_eq!(
        again(&request).finish(&altered, &k.public_key()),
        Err(LinkError::ProofMismatch)
    );
    let mut swapped = good.clone();
    swapped.elements.swap(0, 2);
    assert_eq!(
        again(&request).finish(&swapped, &k.public_key()),
        Err(LinkError::ProofMismatch)
    );
    // A proof from another batch.
    let other = k
        .evaluate(
            Request::new(&["y"], &mut rng(4)).unwrap().blinded(),
            &mut rng(5),
        )
        .unwrap();
    let mut borrowed = good.clone();
    borrowed.proof = other.proof;
    assert_eq!(
        again(&request).finish(&borrowed, &k.public_key()),
        Err(LinkError::ProofMismatch)
    );
    let mut short = good.clone();
    short.elements.pop();
    assert_eq!(
        again(&request).finish(&short, &k.public_key()),
        Err(LinkError::CountMismatch {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(request.finish(&good, &k.public_key()).unwrap().len(), 3);
}

#[test]
fn normalisation_vectors() {
    for (raw, normal) in [
        ("AB 12-34", Some("ab1234")),
        ("  ab1234\t", Some("ab1234")),
        ("+44 (0)7700 900.123", Some("+4407700900123")),
        ("19450101/1234", Some("194501011234")),
        ("Ünïcode-ID", Some("Ünïcodeid")),
        (" - . ", None),
        ("", None),
    ] {
        assert_eq!(normalise(raw).as_deref(), normal, "{raw:?}");
    }
}

#[test]
fn bad_batches_and_identifiers_are_refused() {
    let none: [&str; 0] = [];
    assert_eq!(
        Request::new(&none, &mut rng(1)).err(),
        Some(LinkError::BatchSize { got: 0 })
    );
    let long = "x".repeat(MAX_IDENTIFIER_BYTES + 1);
    assert_eq!(
        Request::new(&["ok", long.as_str()], &mut rng(1)).err(),
        Some(LinkError::BadIdentifier {
            index: 1,
            len: MAX_IDENTIFIER_BYTES + 1
        })
    );
    let e = Request::new(&["a"], &mut rng(1)).unwrap().blinded()[0];
    let too_many = vec![e; MAX_BATCH + 1];
    assert_eq!(
        key(7).evaluate(&too_many, &mut rng(1)).err(),
        Some(LinkError::BatchSize { got: MAX_BATCH + 1 })
    );
}

#[test]
fn wire_encodings_round_trip_and_reject_bad_bytes() {
    let k = key(7);
    let request = Request::new(&["a"], &mut rng(1)).unwrap();
    let evaluation = k.evaluate(request.blinded(), &mut rng(2)).unwrap();
    let e = request.blinded()[0];
    assert_eq!(Element::from_hex(&e.to_hex(), 0), Ok(e));
    assert_eq!(
        Proof::from_hex(&evaluation.proof.to_hex()),
        Ok(evaluation.proof)
    );
    assert_eq!(
        PublicKey::from_hex(&k.public_key().to_hex()),
        Ok(k.public_key())
    );
    assert_eq!(
        OprfKey::from_bytes(k.to_bytes()).unwrap().to_bytes(),
        k.to_bytes()
    );
    let identity = hex::encode([0u8; 32]);
    let non_canonical = hex::encode([0xffu8; 32]);
    for bad in [identity.as_str(), non_canonical.as_str(), "zz", "", "00"] {
        assert_eq!(
            Element::from_hex(bad, 4),
            Err(LinkError::BadElement { index: 4 }),
            "{bad}"
        );
    }
    assert!(OprfKey::from_bytes([0u8; 32]).is_err(), "zero key");
    assert!(
        OprfKey::from_bytes([0xffu8; 32]).is_err(),
        "non-canonical key"
    );
    assert_eq!(Proof::from_hex(&"ff".repeat(64)), Err(LinkError::BadProof));
}

/// Bounded fuzzing of the parsers of hostile bytes: mutated encodings decode or fail with an
/// error, never a panic.
#[test]
fn mutated_encodings_decode_or_fail_cleanly() {
    let k = key(7);
    let request = Request::new(&["a"], &mut rng(1)).unwrap();
    let evaluation = k.evaluate(request.blinded(), &mut rng(2)).unwrap();
    let mut m = veil_abi::mutation::Mutator::new(0x11c);
    for _ in 0..2000 {
        for seed in [
            request.blinded()[0].to_hex(),
            evaluation.proof.to_hex(),
            k.public_key().to_hex(),
        ] {
            let text = String::from_utf8_lossy(&m.mutate(seed.as_bytes())).into_owned();
            let _ = Element::from_hex(&text, 0);
            let _ = Proof::from_hex(&text);
            let _ = PublicKey::from_hex(&text);
        }
    }
}
