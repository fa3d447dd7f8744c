//! The HTTP service over real loopback HTTP: authentication, roles and per-object visibility for
//! each endpoint, and JSON errors with stable codes.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::*;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &Env) -> Server {
    let mut child = Command::new(veil_bin())
        .arg("--data-dir")
        .arg(env.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start veil serve");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Server { child, addr }
}

/// One HTTP/1.1 GET; returns the status and the body.
fn get(server: &Server, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: veil\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn token_for(env: &Env, name: &str, role: &str) -> String {
    let out = env.ok(&[
        "--as",
        "root",
        "admin",
        "add-principal",
        name,
        "--role",
        role,
    ]);
    out.lines().last().unwrap().trim().to_owned()
}

#[test]
fn every_endpoint_checks_token_role_and_ownership() {
    let env = Env::new();
    env.setup("auto");
    let holder = token_for(&env, HOLDER, "holder");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let stranger = token_for(&env, "stranger", "consumer");
    let reviewer = token_for(&env, "rev", "reviewer");
    let server = start(&env);

    // Public endpoints.
    assert_eq!(get(&server, "/v1/health", None).0, 200);
    let (status, body) = get(&server, "/v1/public-key", None);
    assert_eq!(status, 200);
    let keys: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys["public_key"].as_str().unwrap(),
        env.ok(&["keys", "public"]).trim()
    );
    let (status, note) = get(&server, "/v1/audit/checkpoint", None);
    assert_eq!(status, 200);
    assert!(
        note.starts_with("veil.local/audit\n") && note.contains("\n\n\u{2014} "),
        "{note}"
    );

    // The matrix: endpoint × caller → status.
    let wrong = "veil_".to_owned() + &"0".repeat(64);
    let callers: [(&str, Option<&str>); 6] = [
        ("no token", None),
        ("wrong token", Some(&wrong)),
        ("holder", Some(&holder)),
        ("consumer", Some(&consumer)),
        ("stranger", Some(&stranger)),
        ("reviewer", Some(&reviewer)),
    ];
    let expected: [(&str, [u16; 6]); 4] = [
        ("/v1/whoami", [401, 401, 200, 200, 200, 200]),
        ("/v1/datasets", [401, 401, 200, 200, 200, 200]),
        ("/v1/budget", [401, 401, 403, 200, 200, 403]),
        ("/v1/audit/log", [401, 401, 403, 403, 403, 200]),
    ];
    for (path, statuses) in expected {
        for ((who, token), want) in callers.iter().zip(statuses) {
            let (status, body) = get(&server, path, *token);
            assert_eq!(status, want, "{path} as {who}: {body}");
            let v: Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
            if status >= 400 {
                let code = v["error"]["code"].as_str().unwrap();
                assert_eq!(
                    code,
                    if status == 401 {
                        "unauthenticated"
                    } else {
                        "forbidden"
                    }
                );
            }
        }
    }
    // Per-object visibility: the catalog shows only what each principal may use.
    let count = |token: &str| {
        let (_, body) = get(&server, "/v1/datasets", Some(token));
        let v: Value = serde_json::from_str(&body).unwrap();
        v["datasets"].as_array().unwrap().len()
    };
    assert_eq!(
        (
            count(&holder),
            count(&consumer),
            count(&stranger),
            count(&reviewer)
        ),
        (1, 1, 0, 1)
    );
    let (_, body) = get(&server, "/v1/datasets", Some(&consumer));
    assert!(!body.contains("900-00-"), "the catalog never shows rows");
    let (_, body) = get(&server, "/v1/whoami", Some(&reviewer));
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("rev"), Some("reviewer"))
    );
    // Unknown paths are JSON errors too.
    let (status, body) = get(&server, "/v2/anything", Some(&holder));
    assert_eq!(status, 404);
    assert!(body.contains("\"code\":\"not_found\""), "{body}");
}
