//! Join tokens (issue 17, docs/linking.md): identifier columns are replaced by OPRF tokens on the
//! holder's machine, locally and against a server; the same person gets the same token from two
//! holders; no identifier reaches the domain in any encoding; only holders may evaluate.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use datafusion::arrow::array::{Array, StringArray};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::common::*;

const INSURER: &str = "insurer";

/// National IDs of 60 people, as the clinic writes them (`YYMMDD-NNNN`).
fn ids() -> Vec<String> {
    (0..60)
        .map(|i| format!("{:06}-{:04}", 850_101 + i, 1_000 + 37 * i))
        .collect()
}

/// A CSV of `ids` with an age column; `style` rewrites how each identifier is written.
fn csv_of(ids: &[String], style: impl Fn(&str) -> String) -> String {
    let mut csv = String::from("national_id,age\n");
    for (i, id) in ids.iter().enumerate() {
        csv += &format!("{},{}\n", style(id), 20 + i % 50);
    }
    csv
}

fn remote(env: &Env, server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(veil_bin())
        .args(["--server", &server.url()])
        .args(args)
        .env("VEIL_TOKEN", token)
        .env_remove("VEIL_DATA_DIR")
        .current_dir(env.path())
        .output()
        .expect("run veil")
}

/// The tokens stored for dataset `id`, in row order, read straight from its Parquet file.
fn stored_tokens(env: &Env, id: &str) -> Vec<Option<String>> {
    let list = env.ok(&[
        "--as",
        id.split(':').next().unwrap(),
        "dataset",
        "list",
        "--format",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let record = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == id)
        .unwrap_or_else(|| panic!("{id} in {list}"));
    let path = env.data_dir().join("datasets").join(format!(
        "{}.parquet",
        record["content_hash"].as_str().unwrap()
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let batches = rt.block_on(async {
        SessionContext::new()
            .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap()
            .select_columns(&["national_id"])
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    batches
        .iter()
        .flat_map(|b| {
            let c = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let s = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..s.len())
                .map(|i| (!s.is_null(i)).then(|| s.value(i).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The ways an identifier could sit in a file: as written, normalised, without separators, as
/// a number (decimal text, little- and big-endian 64-bit), in hex and in base64.
fn encodings(id: &str) -> Vec<Vec<u8>> {
    let normal = veil_link::normalise(id).unwrap();
    let mut forms: Vec<Vec<u8>> = Vec::new();
    for text in [id.to_owned(), normal.clone()] {
        forms.push(text.as_bytes().to_vec());
        forms.push(hex::encode(text.as_bytes()).into_bytes());
        forms.push(
            base64::engine::general_purpose::STANDARD
                .encode(text.as_bytes())
                .into_bytes(),
        );
        forms.push(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(text.as_bytes())
                .into_bytes(),
        );
    }
    if let Ok(n) = normal.parse::<i64>() {
        forms.push(n.to_string().into_bytes());
        forms.push(n.to_le_bytes().to_vec());
        forms.push(n.to_be_bytes().to_vec());
    }
    forms
}

fn assert_absent(ids: &[String], haystacks: &[(String, Vec<u8>)]) {
    for id in ids {
        for form in encodings(id) {
            for (name, bytes) in haystacks {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                    "identifier {id} found in {name} as {:?}",
                    String::from_utf8_lossy(&form)
                );
            }
        }
    }
}

/// Two holders — one on the store's host, one against the server — register files of national
/// IDs with `--link-key`: the same person gets one token from both, different people different
/// tokens; no identifier appears in the data directory, the server's log or any output.
#[test]
fn identifiers_become_tokens_before_they_reach_the_domain() {
    let env = Env::new();
    env.add_parties();
    let ids = ids();
    let clinic_csv = env.write("clinic.csv", &csv_of(&ids, str::to_owned));
    let local = env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        clinic_csv.to_str().unwrap(),
        "--name",
        "patients",
        "--privacy-unit",
        "national_id",
        "--link-key",
        "national_id",
    ]);
    // The insurer holds the second half and 20 others, written its own way.
    let insurer_token = token_for(&env, INSURER, "holder");
    let others: Vec<String> = (0..20)
        .map(|i| format!("{:06}-{:04}", 990_101 + i, 2_000 + i))
        .collect();
    let insurer_ids: Vec<String> = ids[30..].iter().chain(&others).cloned().collect();
    let insurer_csv = env.write(
        "claims.csv",
        &csv_of(&insurer_ids, |id| format!(" {} ", id.replace('-', " "))),
    );
    let server = Server::start(&env.data_dir(), &[]);
    let out = remote(
        &env,
        &server,
        &insurer_token,
        &[
            "dataset",
            "add",
            "claims.csv",
            "--name",
            "claims",
            "--link-key",
            "national_id",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = insurer_csv;

    let clinic = stored_tokens(&env, "clinic:patients");
    let insurer = stored_tokens(&env, "insurer:claims");
    // Neither holder can reach the other's tokens: the other's dataset answers like a missing
    // one, over HTTP as on the host, and no API returns rows.
    let http = Http::new(&server);
    let (status, _) = http.get("/v1/datasets/clinic:patients", Some(&insurer_token));
    assert_eq!(status, 404, "the insurer cannot see the clinic's dataset");
    let listing = env.ok(&["--as", INSURER, "dataset", "list", "--format", "json"]);
    assert!(!listing.contains("clinic:patients") && !listing.contains(&clinic[0].clone().unwrap()));
    assert_eq!(clinic.len(), 60);
    let distinct: std::collections::BTreeSet<_> = clinic.iter().flatten().collect();
    assert_eq!(
        distinct.len(),
        60,
        "different identifiers, different tokens"
    );
    assert!(clinic.iter().flatten().all(|t| t.len() == 64));
    assert_eq!(
        &clinic[30..],
        &insurer[..30],
        "one person, one token, however written"
    );
    assert!(
        insurer[30..]
            .iter()
            .flatten()
            .all(|t| !distinct.contains(t))
    );

    // Nothing of any identifier anywhere the domain keeps or prints.
    let mut haystacks: Vec<(String, Vec<u8>)> = files(&env.data_dir())
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    let server_log = env.data_dir().with_extension("server.log");
    haystacks.push((
        "the server's log".into(),
        std::fs::read(server_log).unwrap(),
    ));
    haystacks.push(("the clinic's output".into(), local.into_bytes()));
    haystacks.push((
        "the insurer's output".into(),
        [out.stdout, out.stderr].concat(),
    ));
    haystacks.push((
        "the audit log".into(),
        env.ok(&["audit", "log", "--format", "json"]).into_bytes(),
    ));
    let all: Vec<String> = ids.iter().chain(&others).cloned().collect();
    assert_absent(&all, &haystacks);

    // Each evaluation is in the audit log, by its size.
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    assert!(audit.contains("link_evaluated"), "{audit}");

    // Another domain (another link key) gives other tokens for the same file.
    let elsewhere = Env::new();
    elsewhere.add_parties();
    let copy = elsewhere.write("clinic.csv", &csv_of(&ids, str::to_owned));
    elsewhere.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        copy.to_str().unwrap(),
        "--name",
        "patients",
        "--link-key",
        "national_id",
    ]);
    let other_domain = stored_tokens(&elsewhere, "clinic:patients");
    assert!(other_domain.iter().zip(&clinic).all(|(a, b)| a != b));
}

/// Only holders may have the domain evaluate; malformed points are refused naming the element,
/// and refusals record nothing.
#[test]
fn only_holders_evaluate_and_bad_points_change_nothing() {
    let env = Env::new();
    env.add_parties();
    let holder = token_for(&env, HOLDER, "holder");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let (status, key) = http.get("/v1/link/key", None);
    assert_eq!(status, 200, "{key}");
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let public = veil_link::PublicKey::from_hex(key["public_key"].as_str().unwrap()).unwrap();

    let request = veil_link::Request::new(&["8501011234"], &mut rand::rng()).unwrap();
    let body = serde_json::json!({ "blinded": [request.blinded()[0].to_hex()] }).to_string();
    let post = |token: &str, body: &str| {
        http.call(
            "POST",
            "/v1/link/evaluate",
            Some(token),
            Some(("application/json", body.as_bytes())),
        )
    };
    let before = env.ok(&["audit", "log", "--format", "json"]);
    assert_eq!(post(&consumer, &body).0, 403, "consumers may not evaluate");
    let identity =
        serde_json::json!({ "blinded": [request.blinded()[0].to_hex(), "00".repeat(32)] })
            .to_string();
    let (status, answer) = post(&holder, &identity);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("element 1"), "{answer}");
    assert_eq!(
        env.ok(&["audit", "log", "--format", "json"]),
        before,
        "refusals record nothing"
    );

    let (status, answer) = post(&holder, &body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let evaluation = veil_link::Evaluation {
        elements: vec![
            veil_link::Element::from_hex(answer["evaluated"][0].as_str().unwrap(), 0).unwrap(),
        ],
        proof: veil_link::Proof::from_hex(answer["proof"].as_str().unwrap()).unwrap(),
    };
    assert_eq!(
        request.finish(&evaluation, &public).unwrap().len(),
        1,
        "the proof verifies"
    );
}

/// Registers `csv` as `holder`'s dataset `name` with `national_id` as its link key.
fn add_linked(env: &Env, holder: &str, name: &str, csv: &str) {
    let path = env.write(&format!("{holder}-{name}.csv"), csv);
    env.ok(&[
        "--as",
        holder,
        "dataset",
        "add",
        path.to_str().unwrap(),
        "--name",
        name,
        "--link-key",
        "national_id",
    ]);
}

/// A link is proposed by one holder and accepted or rejected by the other, both in the log;
/// only link keys link, only the other holder decides, and a link key never reaches a job.
#[test]
fn links_are_proposed_by_one_holder_and_decided_by_the_other() {
    let env = Env::new();
    env.add_parties();
    let insurer = token_for(&env, INSURER, "holder");
    let ids = ids();
    add_linked(&env, HOLDER, "patients", &csv_of(&ids, str::to_owned));
    add_linked(&env, INSURER, "claims", &csv_of(&ids[30..], str::to_owned));
    add_linked(
        &env,
        INSURER,
        "pharmacy",
        &csv_of(&ids[..10], str::to_owned),
    );

    let propose = |dataset: &str, key: &str, other: &str, their: &str| {
        env.veil(&[
            "--as",
            HOLDER,
            "link",
            "propose",
            dataset,
            "--key",
            key,
            "--with",
            other,
            "--their-key",
            their,
        ])
    };
    let refused = |out: Output, phrase: &str| {
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(phrase), "{phrase}: {err}");
    };
    let before = env.ok(&["audit", "log", "--format", "json"]);
    refused(
        propose("patients", "age", "insurer:claims", "national_id"),
        "not a link key",
    );
    refused(
        propose("patients", "national_id", "insurer:claims", "age"),
        "no dataset `insurer:claims` with link key `age`",
    );
    refused(
        propose("patients", "national_id", "insurer:nothing", "national_id"),
        "no dataset `insurer:nothing` with link key",
    );
    refused(
        env.veil(&[
            "--as",
            CONSUMER,
            "link",
            "propose",
            "patients",
            "--key",
            "national_id",
            "--with",
            "insurer:claims",
            "--their-key",
            "national_id",
        ]),
        "needs the role holder",
    );
    assert_eq!(
        env.ok(&["audit", "log", "--format", "json"]),
        before,
        "refusals record nothing"
    );

    let out = propose("patients", "national_id", "insurer:claims", "national_id");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("link-000001  proposed"),
        "{}",
        text(&out.stdout)
    );
    refused(
        propose("patients", "national_id", "insurer:claims", "national_id"),
        "already have link link-000001",
    );
    // The proposer cannot decide its own proposal; the other holder does, once.
    refused(
        env.veil(&["--as", HOLDER, "link", "accept", "link-000001"]),
        "no link `link-000001`",
    );
    let server = Server::start(&env.data_dir(), &[]);
    let accepted = remote(&env, &server, &insurer, &["link", "accept", "link-000001"]);
    assert!(accepted.status.success(), "{}", text(&accepted.stderr));
    assert!(text(&accepted.stdout).contains("accepted"));
    refused(
        env.veil(&["--as", INSURER, "link", "accept", "link-000001"]),
        "is accepted, not proposed",
    );
    // A second proposal, rejected with a reason.
    propose("patients", "national_id", "insurer:pharmacy", "national_id");
    let rejected = remote(
        &env,
        &server,
        &insurer,
        &["link", "reject", "link-000002", "--reason", "not agreed"],
    );
    assert!(rejected.status.success(), "{}", text(&rejected.stderr));

    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["--as", INSURER, "link", "list", "--format", "json"]))
            .unwrap();
    assert_eq!(listed[0]["state"], "accepted", "{listed}");
    assert_eq!(listed[1]["state"], "rejected");
    assert_eq!(listed[1]["reason"], "not agreed");
    let remote_list = remote(
        &env,
        &server,
        &insurer,
        &["link", "list", "--format", "json"],
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&remote_list.stdout).unwrap(),
        listed,
        "remote answers like local"
    );
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    assert_eq!(audit.matches("link_proposed").count(), 2, "{audit}");
    assert_eq!(audit.matches("link_decided").count(), 2);

    // A link key may be the privacy unit or forbidden, never delivered to a job.
    let policy = env.write(
        "p.toml",
        &format!(
            "consumers = [\"{CONSUMER}\"]\napproval = \"auto\"\nmin_units_per_group = 5\nmax_groups_per_unit = 1\n\
             [dp]\nepsilon_per_job = 1.0\nepsilon_total = 2.0\n[columns]\nage = {{ class = \"public\" }}\n\
             national_id = {{ class = \"quasi\" }}\n"
        ),
    );
    refused(
        env.veil(&[
            "--as",
            HOLDER,
            "policy",
            "set",
            "patients",
            policy.to_str().unwrap(),
        ]),
        "is a link key",
    );
}

/// An upload that declares a link key whose values are not tokens is refused without quoting
/// them.
#[test]
fn a_link_key_of_raw_identifiers_is_refused_unquoted() {
    let env = Env::new();
    env.add_parties();
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let csv = csv_of(&ids()[..5], str::to_owned);
    let (status, answer) = http.call(
        "POST",
        "/v1/datasets?name=raw&link_keys=national_id",
        Some(&holder),
        Some(("text/csv", csv.as_bytes())),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("must hold join tokens"), "{answer}");
    assert!(!answer.contains("850101"), "never quotes a value: {answer}");
    let listing = env.ok(&["--as", HOLDER, "dataset", "list"]);
    assert!(!listing.contains("raw"), "nothing registered: {listing}");
}

/// Links the clinic's `patients` with the insurer's `claims` (link-000001): proposed by the
/// clinic, accepted by the insurer.
fn link_patients_with_claims(env: &Env) {
    env.ok(&[
        "--as",
        HOLDER,
        "link",
        "propose",
        "patients",
        "--key",
        "national_id",
        "--with",
        "insurer:claims",
        "--their-key",
        "national_id",
    ]);
    env.ok(&["--as", INSURER, "link", "accept", "link-000001"]);
}

/// Sets `text` as `holder`'s policy on `dataset`.
fn set_policy_of(env: &Env, holder: &str, dataset: &str, text: &str) {
    let path = env.write(&format!("{holder}-{dataset}.toml"), text);
    env.ok(&[
        "--as",
        holder,
        "policy",
        "set",
        dataset,
        path.to_str().unwrap(),
    ]);
}

fn linked_policy(approval: &str, epsilon_total: f64, columns: &str) -> String {
    format!(
        "privacy_unit = \"national_id\"\nconsumers = [\"{CONSUMER}\"]\napproval = \"{approval}\"\n\
         min_units_per_group = 5\nmax_groups_per_unit = 1\nmax_rows_per_unit = 2\nmax_units = 200\n\
         [dp]\nepsilon_per_job = 1.0\nepsilon_total = {epsilon_total}\n[columns]\n{columns}"
    )
}

/// The clinic's 60 patients (band A for the first 30, B for the rest) and the insurer's claims
/// for the last 40 of them plus 20 others, two claims of 100 each per person.
fn linked_env() -> Env {
    let env = Env::new();
    env.add_parties();
    token_for(&env, INSURER, "holder");
    let ids = ids();
    let mut patients = String::from("national_id,band\n");
    for (i, id) in ids.iter().enumerate() {
        patients += &format!("{id},{}\n", if i < 30 { "A" } else { "B" });
    }
    let others: Vec<String> = (0..20)
        .map(|i| format!("{:06}-{:04}", 990_101 + i, 2_000 + i))
        .collect();
    let mut claims = String::from("national_id,amount\n");
    for id in ids[20..].iter().chain(&others) {
        claims += &format!("{id},100\n{id},100\n");
    }
    add_linked(&env, HOLDER, "patients", &patients);
    add_linked(&env, INSURER, "claims", &claims);
    // Both holders declare the bands public, so both groups are always released (no threshold).
    let bands = "[partitions]\nband = [\"A\", \"B\"]\n";
    let patients_policy = linked_policy("auto", 3.0, "band = { class = \"public\" }\n") + bands;
    set_policy_of(&env, HOLDER, "patients", &patients_policy);
    let amount = "amount = { class = \"sensitive\", bounds = [0, 500] }\n";
    set_policy_of(
        &env,
        INSURER,
        "claims",
        &(linked_policy("manual", 3.0, amount) + bands),
    );
    env
}

fn sql_job(env: &Env, query: &str, epsilon: &str) -> Output {
    Command::new(veil_bin())
        .arg("--data-dir")
        .arg(env.data_dir())
        .args([
            "--as",
            CONSUMER,
            "job",
            "submit",
            "--sql",
            query,
            "--dataset",
            "patients",
            "--epsilon",
            epsilon,
        ])
        .env("VEIL_INSECURE_TEST_NOISE_SEED", "7")
        .output()
        .expect("run veil")
}

const LINKED_QUERY: &str = "SELECT p.band AS band, COUNT(*) AS people, SUM(c.amount) AS total \
                            FROM patients p JOIN \"insurer:claims\" c USING (national_id) \
                            GROUP BY p.band ORDER BY band";

/// A SQL job over an accepted link: refused before the link is accepted, waits for both holders'
/// approval, is charged on both datasets in the transaction that starts it, and releases the
/// joined answer within its intervals; the overlap is a DP count like any other.
#[test]
fn a_sql_job_over_a_link_runs_under_both_policies_and_budgets() {
    let env = linked_env();
    let before = env.ok(&["audit", "log", "--format", "json"]);
    let out = sql_job(&env, LINKED_QUERY, "1");
    assert!(!out.status.success(), "no accepted link yet");
    assert!(
        text(&out.stderr).contains("reads only its dataset"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        env.ok(&["audit", "log", "--format", "json"]),
        before,
        "nothing recorded"
    );

    link_patients_with_claims(&env);

    let out = sql_job(&env, LINKED_QUERY, "1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = text(&out.stdout).trim().to_owned();
    let status = env.ok(&["--as", CONSUMER, "job", "status", &job]);
    assert!(
        status.contains("awaiting"),
        "the insurer's policy asks for approval: {status}"
    );
    // Both holders see it; the clinic's approval alone does not start it.
    for holder in [HOLDER, INSURER] {
        let queue = env.ok(&["--as", holder, "job", "list"]);
        assert!(queue.contains(&job), "{holder}: {queue}");
    }
    env.ok(&["--as", HOLDER, "job", "approve", &job]);
    let status = env.ok(&["--as", CONSUMER, "job", "status", &job]);
    assert!(
        status.contains("awaiting"),
        "still waiting for the insurer: {status}"
    );
    env.ok(&["--as", INSURER, "job", "approve", &job]);

    let result: serde_json::Value = serde_json::from_str(
        &env.ok(&["--as", CONSUMER, "job", "result", &job, "--format", "json"]),
    )
    .unwrap();
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "both public bands are released: {result}");
    // Band A: patients 20..30 have claims (10 people); band B: patients 30..60 (30 people);
    // each claims 2 × 100.
    for (row, (band, people, total)) in rows
        .iter()
        .zip([("A", 10.0, 2_000.0), ("B", 30.0, 6_000.0)])
    {
        assert_eq!(row["key"][0], band, "{result}");
        assert!(near(&row["units"], people), "{row}");
        assert!(near(&row["values"][0]["sum"], total), "{row}");
    }
    // Each holder gets its own receipt of the release, verified offline.
    let key = env.ok(&["keys", "public"]);
    for holder in [HOLDER, INSURER] {
        let receipt = env.path().join(format!("{holder}-receipt.json"));
        env.ok(&[
            "--as",
            holder,
            "job",
            "receipt",
            &job,
            "--out",
            receipt.to_str().unwrap(),
        ]);
        env.ok(&[
            "receipt",
            "verify",
            receipt.to_str().unwrap(),
            "--public-key",
            key.trim(),
        ]);
        // It proves the linked side's charge too: its dataset, version and policy.
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
        assert_eq!(doc["facts"]["linked"]["dataset"], "insurer:claims", "{doc}");
        assert_eq!(doc["proofs"].as_array().unwrap().len(), 4);
        // A receipt whose linked facts were altered no longer verifies.
        let mut forged = doc.clone();
        forged["facts"]["linked"]["dataset"] = "insurer:other".into();
        let forged_path = env.path().join(format!("{holder}-forged.json"));
        std::fs::write(&forged_path, forged.to_string()).unwrap();
        let out = env.veil(&[
            "receipt",
            "verify",
            forged_path.to_str().unwrap(),
            "--public-key",
            key.trim(),
        ]);
        assert!(
            !out.status.success(),
            "a forged linked fact must not verify"
        );
    }
    // Charged on both datasets, in the transaction that started it.
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    assert!(
        budget.contains("clinic:patients") && budget.contains("insurer:claims"),
        "{budget}"
    );
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    assert!(audit.contains("job_charged"), "{audit}");
    // Neither holder's log shows counters that would tell the overlap.
    let log = env.ok(&["--as", HOLDER, "job", "logs", &job]);
    assert!(log.contains("withheld") && !log.contains("units,"), "{log}");

    // The overlap, as a DP count: 40 people on both sides.
    let overlap =
        "SELECT COUNT(*) AS overlap FROM patients p JOIN \"insurer:claims\" c USING (national_id)";
    let out = sql_job(&env, overlap, "0.5");
    let job = text(&out.stdout).trim().to_owned();
    env.ok(&["--as", INSURER, "job", "approve", &job]);
    env.ok(&["--as", HOLDER, "job", "approve", &job]);
    let result: serde_json::Value = serde_json::from_str(
        &env.ok(&["--as", CONSUMER, "job", "result", &job, "--format", "json"]),
    )
    .unwrap();
    assert!(near(&result["rows"][0]["units"], 40.0), "{result}");
}

/// Either holder's policy can refuse a linked job: a column the partner forbids, or the budget
/// on the partner's side; a refused job charges neither side.
#[test]
fn either_policy_or_budget_refuses_a_linked_job() {
    let env = linked_env();
    link_patients_with_claims(&env);
    set_policy_of(
        &env,
        INSURER,
        "claims",
        &linked_policy("auto", 1.0, "amount = { class = \"forbidden\" }\n"),
    );
    let out = sql_job(&env, LINKED_QUERY, "0.6");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("forbidden by its holder's policy"), "{err}");
    let sensitive = "amount = { class = \"sensitive\", bounds = [0, 500] }\n";
    set_policy_of(
        &env,
        INSURER,
        "claims",
        &linked_policy("auto", 1.0, sensitive),
    );
    let first = sql_job(&env, LINKED_QUERY, "0.6");
    assert!(first.status.success(), "{}", text(&first.stderr));
    // The insurer's total (1.0) has 0.4 left; the clinic's (3.0) has 2.4. The check shows
    // what a job would leave on both.
    let check = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "check",
        "--sql",
        LINKED_QUERY,
        "--dataset",
        "patients",
        "--epsilon",
        "0.3",
        "--json",
    ]);
    let check: serde_json::Value = serde_json::from_str(&check).unwrap();
    assert_eq!(check["linked"]["dataset"], "insurer:claims", "{check}");
    assert!(
        (check["linked"]["epsilon_left_after"].as_f64().unwrap() - 0.1).abs() < 1e-9,
        "{check}"
    );
    assert!(
        (check["epsilon_left_after"].as_f64().unwrap() - 2.1).abs() < 1e-9,
        "{check}"
    );
    let out = sql_job(&env, LINKED_QUERY, "0.6");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("insurer:claims"),
        "the refusal names the side that refuses: {err}"
    );
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    assert!(
        !budget.contains("1.2"),
        "the refused job charged neither side: {budget}"
    );
}

/// Kills the server at random points while linked jobs start: after every restart, each job
/// started has been charged on both datasets or on neither — `job_started` and `job_charged`
/// come together — and each ledger equals the sum of its entries' charges.
#[test]
fn a_kill_during_linked_starts_charges_both_sides_or_neither() {
    use rand::{Rng, SeedableRng};
    let env = linked_env();
    let columns = "amount = { class = \"sensitive\", bounds = [0, 500] }\n";
    set_policy_of(
        &env,
        INSURER,
        "claims",
        &linked_policy("auto", 50.0, columns),
    );
    set_policy_of(
        &env,
        HOLDER,
        "patients",
        &linked_policy("auto", 50.0, "band = { class = \"public\" }\n"),
    );
    link_patients_with_claims(&env);
    let consumer = token_for(&env, CONSUMER, "consumer");
    let manifest = format!("dataset = \"patients\"\nsql = '{LINKED_QUERY}'\nepsilon = 0.05\n");
    let body = serde_json::json!({ "manifest": manifest }).to_string();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x11c);
    let mut server = Server::start(&env.data_dir(), &[("VEIL_WORKERS", "2")]);
    let mut started_total = 0;
    for round in 0..12 {
        let (url, token, body) = (server.url(), consumer.clone(), body.clone());
        let submitter = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            for _ in 0..5 {
                let sent = agent
                    .post(format!("{url}/v1/jobs"))
                    .header("Authorization", format!("Bearer {token}"))
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes());
                if sent.is_err() {
                    return;
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..300)));
        server.kill();
        let _ = submitter.join();
        server = Server::start(&env.data_dir(), &[("VEIL_WORKERS", "2")]);
        started_total = both_or_neither(&env, round);
    }
    assert!(server.terminate().success());
    assert!(
        started_total >= 10,
        "only {started_total} linked jobs started"
    );
}

/// Checks that every started linked job was charged on both sides and that each ledger is the
/// sum of its charges; answers how many jobs started.
fn both_or_neither(env: &Env, round: usize) -> usize {
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    let mut started = std::collections::BTreeMap::new();
    let mut charged = std::collections::BTreeMap::new();
    for line in audit.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let event = &entry["event"];
        let target = match event["kind"].as_str() {
            Some("job_started") => &mut started,
            Some("job_charged") => &mut charged,
            _ => continue,
        };
        target.insert(
            event["job"].as_str().unwrap().to_owned(),
            (
                event["dataset"].as_str().unwrap().to_owned(),
                event["epsilon_micro"].as_u64().unwrap(),
            ),
        );
    }
    let jobs = |m: &std::collections::BTreeMap<String, (String, u64)>| {
        m.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        jobs(&started),
        jobs(&charged),
        "round {round}: a start without its second charge"
    );
    let conn = rusqlite::Connection::open(env.data_dir().join("veil.db")).unwrap();
    for (events, dataset) in [(&started, "clinic:patients"), (&charged, "insurer:claims")] {
        let sum: u64 = events
            .values()
            .filter(|(d, _)| d == dataset)
            .map(|(_, e)| e)
            .sum();
        let ledger: u64 = conn
            .query_row(
                "SELECT COALESCE(SUM(spent_micro), 0) FROM budget WHERE consumer = ?1 AND dataset = ?2",
                [CONSUMER, dataset],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            ledger, sum,
            "round {round}: the ledger on {dataset} disagrees with the log"
        );
    }
    started.len()
}

/// Either holder may revoke a link: a job over it that has not started is refused when it would
/// start, charging nothing, and no new job can join it.
#[test]
fn a_revoked_link_can_no_longer_be_joined() {
    let env = linked_env();
    link_patients_with_claims(&env);
    let out = sql_job(&env, LINKED_QUERY, "0.5");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = text(&out.stdout).trim().to_owned();
    let revoked = env.ok(&[
        "--as",
        INSURER,
        "link",
        "revoke",
        "link-000001",
        "--reason",
        "the agreement ended",
    ]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let again = env.veil(&[
        "--as",
        HOLDER,
        "link",
        "revoke",
        "link-000001",
        "--reason",
        "x",
    ]);
    assert!(
        text(&again.stderr).contains("not in force"),
        "{}",
        text(&again.stderr)
    );
    env.ok(&["--as", HOLDER, "job", "approve", &job]);
    // The last approval starts the job (local mode), and the start refuses it.
    let started = env.veil(&["--as", INSURER, "job", "approve", &job]);
    assert!(!started.status.success());
    assert!(
        text(&started.stderr).contains("link it joins was revoked"),
        "{}",
        text(&started.stderr)
    );
    let status = env.ok(&["--as", CONSUMER, "job", "status", &job]);
    assert!(status.contains("refused"), "{status}");
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    assert!(!budget.contains("0.5"), "nothing charged: {budget}");
    let out = sql_job(&env, LINKED_QUERY, "0.5");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("reads only its dataset"),
        "{}",
        text(&out.stderr)
    );
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    assert!(audit.contains("link_revoked"), "{audit}");
}

/// A module job over a link: each person's rows of both datasets reach the module together (the
/// linked dataset's columns as `joined.<name>`), only for the people its coverage takes, under
/// both policies and charged on both datasets.
#[test]
fn a_module_job_over_a_link_sees_both_sides_rows_of_each_person() {
    let env = linked_env();
    let columns = "amount = { class = \"sensitive\", bounds = [0, 500] }\n";
    // The probe's one group, declared public by both holders (so no δ and no threshold).
    let public = "[partitions]\nseen = [\"band,joined.amount\"]\n";
    set_policy_of(
        &env,
        INSURER,
        "claims",
        &(linked_policy("auto", 3.0, columns) + public),
    );
    let band = "band = { class = \"public\" }\n";
    set_policy_of(
        &env,
        HOLDER,
        "patients",
        &(linked_policy("auto", 3.0, band) + public),
    );
    link_patients_with_claims(&env);
    // column_probe emits, per person, its row count to the group named by the columns it sees.
    for (coverage, people, rows_per_person) in [("inner", 40.0, 3.0), ("full", 80.0, 0.0)] {
        let manifest = env.write(
            &format!("probe-{coverage}.toml"),
            &format!(
                "dataset = \"patients\"\nmodule = \"modules/column_probe.wasm\"\ncolumns = [\"band\"]\n\
                 epsilon = 0.5\n[join]\ndataset = \"insurer:claims\"\ncolumns = [\"amount\"]\n\
                 coverage = \"{coverage}\"\n[output]\nkeys = [\"seen\"]\n\
                 values = [{{ name = \"rows\", bounds = [0, 4], aggregate = \"mean\" }}]\n"
            ),
        );
        let out = Command::new(veil_bin())
            .arg("--data-dir")
            .arg(env.data_dir())
            .args([
                "--as",
                CONSUMER,
                "job",
                "submit",
                manifest.to_str().unwrap(),
            ])
            .env("VEIL_INSECURE_TEST_NOISE_SEED", "3")
            .output()
            .unwrap();
        assert!(out.status.success(), "{coverage}: {}", text(&out.stderr));
        let job = text(&out.stdout).trim().to_owned();
        let result: serde_json::Value = serde_json::from_str(
            &env.ok(&["--as", CONSUMER, "job", "result", &job, "--format", "json"]),
        )
        .unwrap();
        let row = &result["rows"][0];
        assert_eq!(row["key"][0], "band,joined.amount", "{result}");
        assert!(near(&row["units"], people), "{coverage}: {result}");
        if rows_per_person > 0.0 {
            // People on both sides: 1 patient row and 2 claims each, together.
            let mean = &row["values"][0]["mean"];
            assert!(
                mean["ci95"][0].as_f64().unwrap() <= rows_per_person + 0.5,
                "{result}"
            );
            assert!(
                mean["ci95"][1].as_f64().unwrap() >= rows_per_person - 0.5,
                "{result}"
            );
        }
    }
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    assert!(
        budget.contains("insurer:claims"),
        "charged on both: {budget}"
    );
    // The module saw both holders' rows: neither holder reads its log or the counters.
    for holder in [HOLDER, INSURER] {
        let log = env.ok(&["--as", holder, "job", "logs", "job-000001"]);
        assert!(
            log.contains("withheld") && !log.contains("gate:"),
            "{holder}: {log}"
        );
    }
    // A column the partner forbids, or its link key, never reaches the module.
    for (column, phrase) in [("national_id", "link key"), ("nothing", "no column")] {
        let out = env.submit_manifest(
            "bad.toml",
            &format!(
                "dataset = \"patients\"\nmodule = \"modules/column_probe.wasm\"\ncolumns = [\"band\"]\n\
                 epsilon = 0.5\n[join]\ndataset = \"insurer:claims\"\ncolumns = [\"{column}\"]\n\
                 [output]\nkeys = [\"seen\"]\nvalues = [{{ name = \"rows\", bounds = [0, 4] }}]\n"
            ),
        );
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains(phrase),
            "{column}: {}",
            text(&out.stderr)
        );
    }
}

/// A holder's evaluations are capped per hour: a batch beyond the cap is refused as busy before
/// anything is evaluated or recorded.
#[test]
fn link_evaluations_are_capped_per_holder_and_hour() {
    let env = Env::new();
    env.add_parties();
    let config = veil_engine::EngineConfig::builder()
        .max_link_evaluations_per_hour(3)
        .build();
    let mut veil = veil_engine::Veil::open(&env.data_dir(), config).unwrap();
    let request = veil_link::Request::new(&["a", "b"], &mut rand::rng()).unwrap();
    let blinded: Vec<String> = request.blinded().iter().map(|e| e.to_hex()).collect();
    veil.evaluate_link(&holder(), &blinded).unwrap();
    let entries = veil.audit_entries().unwrap().len();
    match veil.evaluate_link(&holder(), &blinded) {
        Err(veil_engine::EngineError::Busy(m)) => assert!(m.contains("at most 3"), "{m}"),
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(
        veil.audit_entries().unwrap().len(),
        entries,
        "nothing recorded"
    );
}

/// A Parquet file's link key is tokenised on the holder's machine too, and registered as
/// Parquet with tokens in the identifiers' place.
#[test]
fn a_parquet_files_identifiers_become_tokens_too() {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let env = Env::new();
    env.add_parties();
    let ids = ids();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("national_id", DataType::Utf8, true),
        Field::new("age", DataType::Int64, false),
    ]));
    let batch = datafusion::arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(StringArray::from(ids.clone())),
            std::sync::Arc::new(Int64Array::from_iter_values(0..ids.len() as i64)),
        ],
    )
    .unwrap();
    let path = env.path().join("patients.parquet");
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema,
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        path.to_str().unwrap(),
        "--name",
        "patients",
        "--link-key",
        "national_id",
    ]);
    let tokens = stored_tokens(&env, "clinic:patients");
    assert_eq!(tokens.len(), ids.len());
    assert!(tokens.iter().flatten().all(|t| t.len() == 64), "{tokens:?}");
    let haystacks: Vec<(String, Vec<u8>)> = files(&env.data_dir())
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    assert_absent(&ids, &haystacks);
}

/// A SQL job over a link reads every joined row and is scheduled for `max_rows_per_unit` rows
/// of a person on each side: a policy under which one token has more rows is refused (it would
/// make such jobs release late, a timing channel), saying which value fits, and changes nothing.
#[test]
fn a_policy_must_schedule_for_each_tokens_rows() {
    let env = linked_env();
    let before = env.snapshot();
    let amount = "amount = { class = \"sensitive\", bounds = [0, 500] }\n";
    // Two claims per person; 120 rows in all fit 200 units of one row.
    let one_row = linked_policy("manual", 3.0, amount)
        .replace("max_rows_per_unit = 2", "max_rows_per_unit = 1");
    let path = env.write("one-row.toml", &one_row);
    let out = env.veil(&[
        "--as",
        INSURER,
        "policy",
        "set",
        "claims",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let msg = text(&out.stderr);
    assert!(
        msg.contains("a join token of `national_id`")
            && msg.contains("has 2 rows")
            && msg.contains("max_rows_per_unit to at least 2"),
        "{msg}"
    );
    assert_eq!(env.snapshot(), before, "a refused policy changes nothing");
}
