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
