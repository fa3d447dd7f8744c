//! Principals and tokens: created by an admin, token shown once and stored hashed, authentication
//! by token, creation recorded in the audit log without the token.
use veil_engine::{EngineConfig, EngineError, Role, Veil};

use crate::common::*;

#[test]
fn tokens_are_shown_once_stored_hashed_and_authenticate_their_principal() {
    let env = Env::new();
    env.ok(&["init"]);
    let out = env.ok(&["admin", "add-principal", "clinic", "--role", "holder"]);
    assert!(out.contains("clinic (holder) created"), "{out}");
    let token = out.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("veil_") && token.len() == 69, "{token}");

    // The store holds no trace of the token itself, and neither does the log.
    let db = std::fs::read(env.data_dir().join("veil.db")).unwrap();
    let secret = token.as_bytes();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret),
        "raw token in the store"
    );
    let log = env.ok(&["audit", "log", "--format", "json"]);
    assert!(
        log.contains("\"kind\":\"principal_created\"") && log.contains("\"admin\":\"operator\"")
    );
    assert!(!log.contains(&token[5..]), "token in the log");

    let veil = Veil::open(&env.data_dir(), EngineConfig::builder().workers(1).build()).unwrap();
    let who = veil.authenticate(&token).unwrap();
    assert_eq!((who.name.as_str(), who.role), ("clinic", Role::Holder));
    // Wrong, altered, truncated or empty tokens: one answer for all.
    let mut altered = token.clone();
    altered.pop();
    altered.push(if token.ends_with('0') { '1' } else { '0' });
    for bad in [altered.as_str(), &token[..20], "", "veil_", "Bearer x"] {
        match veil.authenticate(bad) {
            Err(EngineError::Forbidden(m)) => assert_eq!(m, "unknown or invalid token"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    drop(veil);

    // Names are unique; roles are checked; listings never show tokens.
    let out = env.veil(&["admin", "add-principal", "clinic", "--role", "consumer"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    let out = env.veil(&["admin", "add-principal", "eve", "--role", "god"]);
    assert_eq!(out.status.code(), Some(2));
    let second = env.ok(&["admin", "add-principal", "acme", "--role", "consumer"]);
    let second = second.lines().last().unwrap().trim().to_owned();
    assert_ne!(second, token);
    let list = env.ok(&["admin", "principals"]);
    assert!(list.contains("acme") && list.contains("consumer") && list.contains("clinic"));
    assert!(!list.contains("veil_"), "{list}");
    assert!(env.ok(&["audit", "verify"]).contains("intact"));

    // Locally, `--as` names a stored principal and acts in its role: an unknown name is an error
    // that says how to create it, and a holder is no admin.
    let out = env.veil(&["--as", "mallory", "dataset", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no principal named `mallory`")
            && text(&out.stderr).contains("veil admin add-principal mallory"),
        "{}",
        text(&out.stderr)
    );
    let out = env.veil(&[
        "--as",
        "clinic",
        "admin",
        "add-principal",
        "eve",
        "--role",
        "admin",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("this needs the role admin"),
        "{}",
        text(&out.stderr)
    );
    env.ok(&["admin", "revoke", "acme"]);
    let out = env.veil(&["--as", "acme", "budget"]);
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}

/// Consumers of one dataset do not learn each other's names: each reads the policy with the
/// `consumers` list cut to itself, in local and remote mode alike; the holder reads it whole,
/// and the hash shown is always the holder's text's (the one receipts name).
#[test]
fn consumers_read_the_policy_without_each_others_names() {
    const RIVAL: &str = "rival-co";
    let env = Env::new();
    let text = policy("auto").replace(
        &format!("consumers = [\"{CONSUMER}\"]"),
        &format!("consumers = [\"{CONSUMER}\", \"{RIVAL}\"]"),
    );
    env.setup_with_policy(&text);
    env.ok(&["admin", "add-principal", RIVAL, "--role", "consumer"]);
    let holder = env.ok(&["--as", HOLDER, "policy", "show", "people"]);
    assert!(
        holder.contains(RIVAL) && holder.contains(CONSUMER),
        "{holder}"
    );
    let hash = |shown: &str| shown.split("sha256 ").nth(1).map(|t| t[..64].to_owned());
    for (me, other) in [(CONSUMER, RIVAL), (RIVAL, CONSUMER)] {
        let shown = env.ok(&["--as", me, "policy", "show", "people"]);
        assert!(!shown.contains(other), "{me} sees {other}: {shown}");
        assert!(
            shown.contains(&format!("consumers = [\"{me}\"]")),
            "{shown}"
        );
        assert!(shown.contains("weekly_income"), "the rules stay: {shown}");
        assert_eq!(hash(&shown), hash(&holder), "the holder's text's hash");
    }

    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let token = token_for(&env, CONSUMER, "consumer");
    let (status, body) = http.get("/v1/datasets/people/policy", Some(&token));
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["consumers_withheld"], true, "{doc}");
    assert!(!body.contains(RIVAL), "{body}");
    let token = token_for(&env, HOLDER, "holder");
    let (_, body) = http.get("/v1/datasets/people/policy", Some(&token));
    assert!(
        body.contains(RIVAL) && !body.contains("consumers_withheld"),
        "{body}"
    );
}
