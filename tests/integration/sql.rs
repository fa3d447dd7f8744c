//! DP SQL jobs (docs/sql.md) through the whole pipeline: the CLI one-liner and manifests, local
//! and over HTTP, the check, refusals that record nothing, and the released answers against the
//! exact ones.
use std::process::Command;

use crate::common::*;

/// The people dataset's exact answer (common::people_csv): 200 people with educ 12 earning
/// 700 + id % 10 (even ids: mean 704), 200 with educ 16 earning 1300 + id % 10 (odd ids: mean
/// 1305), and 2 with educ 20 — a group below the policy's minimum of 20.
const QUERY: &str = "SELECT educ, COUNT(*) AS people, AVG(weekly_income) AS mean_income \
                     FROM people GROUP BY educ";

/// Runs veil with a fixed noise seed (debug builds only), so the released numbers are
/// reproducible and the interval checks below are deterministic.
fn seeded(env: &Env, seed: u64, args: &[&str]) -> String {
    let out = Command::new(veil_bin())
        .arg("--data-dir")
        .arg(env.data_dir())
        .args(args)
        .env("VEIL_INSECURE_TEST_NOISE_SEED", seed.to_string())
        .output()
        .expect("run veil");
    assert!(
        out.status.success(),
        "veil {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Submits `query` on `people` as the consumer with a fixed noise seed; its job id.
/// The consumer's `job submit|check --sql QUERY --dataset people --epsilon E` arguments.
fn sql_args<'a>(command: &'a str, query: &'a str, epsilon: &'a str) -> Vec<&'a str> {
    vec![
        "--as",
        CONSUMER,
        "job",
        command,
        "--sql",
        query,
        "--dataset",
        "people",
        "--epsilon",
        epsilon,
    ]
}

fn submit_sql(env: &Env, seed: u64, query: &str, epsilon: &str) -> String {
    seeded(env, seed, &sql_args("submit", query, epsilon))
        .trim()
        .to_owned()
}

/// A released job's result, as JSON.
fn result_of(env: &Env, job: &str) -> serde_json::Value {
    let json = env.ok(&["--as", CONSUMER, "job", "result", job, "--format", "json"]);
    serde_json::from_str(&json).unwrap()
}

fn within(cell: &serde_json::Value, exact: f64) -> bool {
    let ci = &cell["ci95"];
    ci[0].as_f64().unwrap() <= exact && exact <= ci[1].as_f64().unwrap()
}

#[test]
fn a_sql_one_liner_releases_counts_and_means_through_the_gate() {
    let env = Env::new();
    env.setup("auto");
    let job = seeded(
        &env,
        11,
        &[
            sql_args("submit", QUERY, "1"),
            vec!["--purpose", "wages by education"],
        ]
        .concat(),
    );
    let job = job.trim();
    let result = result_of(&env, job);
    assert_eq!(result["key_names"], serde_json::json!(["educ"]));
    let rows = result["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"][0].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        ["12", "16"],
        "the 2-person group is withheld: {result}"
    );
    for (row, (count, mean)) in rows.iter().zip([(200.0, 704.0), (200.0, 1305.0)]) {
        assert!(within(&row["units"], count), "{row}");
        let value = &row["values"][0];
        assert_eq!(value["name"], "mean_income");
        assert!(within(&value["mean"], mean), "{row}");
    }
    assert_eq!(result["epsilon"], 1.0);
    // The holder's log shows the query and the gate's counters; the audit log its hash.
    let log = env.ok(&["--as", HOLDER, "job", "logs", job]);
    assert!(log.contains("sql: SELECT educ"), "{log}");
    assert!(log.contains("gate: 402 units"), "{log}");
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    let hash = veil_policy::document_hash(QUERY);
    assert!(
        audit.contains(&hash),
        "the query's SHA-256 is the job's algorithm"
    );
    // The budget is charged as for any job, and the receipt verifies offline.
    let budget = env.ok(&["--as", CONSUMER, "budget"]);
    assert!(budget.contains("1.0") || budget.contains(" 1 "), "{budget}");
    let receipt = env.path().join("r.json");
    env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "receipt",
        job,
        "--out",
        receipt.to_str().unwrap(),
    ]);
    let key = env.ok(&["keys", "public"]);
    env.ok(&[
        "receipt",
        "verify",
        receipt.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
}

/// Released intervals cover the exact answer about 95% of the time: over 40 seeded releases
/// of 2 groups × (count, mean), at most 12 of the 160 cells miss (expected 8 or fewer: the
/// intervals are exact for the count and conservative for the mean; 12 or more misses has
/// probability below 0.5% under a 5% miss rate).
#[test]
fn sql_intervals_cover_the_exact_answers() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 100"));
    let mut misses = 0;
    for seed in 0..40 {
        let job = submit_sql(&env, 1000 + seed, QUERY, "0.5");
        let result = result_of(&env, &job);
        for row in result["rows"].as_array().unwrap() {
            let (count, mean) = match row["key"][0].as_str().unwrap() {
                "12" => (200.0, 704.0),
                "16" => (200.0, 1305.0),
                other => panic!("unexpected group {other}"),
            };
            misses += usize::from(!within(&row["units"], count));
            misses += usize::from(!within(&row["values"][0]["mean"], mean));
        }
    }
    assert!(misses <= 12, "{misses} of 160 cells missed");
}

/// `job check --sql` forecasts the release and spends nothing; refused constructs are bad
/// input that records nothing.
#[test]
fn sql_checks_spend_nothing_and_refusals_record_nothing() {
    let env = Env::new();
    env.setup("auto");
    let check = env.ok(&[sql_args("check", QUERY, "0.5"), vec!["--json"]].concat());
    let check: serde_json::Value = serde_json::from_str(&check).unwrap();
    assert!(check["forecast"].is_object(), "{check}");
    assert_eq!(check["module_hash"], veil_policy::document_hash(QUERY));
    let before = env.snapshot();
    for (query, phrase) in [
        ("SELECT * FROM people", "releases rows"),
        (
            "SELECT COUNT(*) AS n FROM information_schema.tables",
            "reads only its dataset",
        ),
        ("DROP TABLE people", "not a SELECT"),
        (
            "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ; SELECT 1",
            "2 statements",
        ),
        (
            "SELECT SUM(weekly_income * 2) AS s FROM people",
            "needs bounds",
        ),
    ] {
        let out = env.veil(&sql_args("submit", query, "0.5"));
        assert!(!out.status.success(), "{query}");
        let err = text(&out.stderr);
        assert!(err.contains(phrase), "{query}: {err}");
    }
    // A time budget shorter than the query's bounds allow: the run could outlast it and be
    // released late by a time that grows with the rows.
    let out = env.submit_manifest(
        "short.toml",
        &format!("dataset = \"people\"\nsql = \"{QUERY}\"\nepsilon = 0.5\ntime_budget_ms = 5\n"),
    );
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("time_budget_ms = 5") && err.contains("at least"),
        "{err}"
    );
    assert_eq!(env.snapshot(), before, "refused SQL changed nothing");
    let budget = env.ok(&["--as", CONSUMER, "budget"]);
    assert!(!budget.contains("0.5"), "nothing spent: {budget}");
}

/// A query touching a forbidden column is a policy refusal, recorded like any other.
#[test]
fn a_forbidden_column_is_a_recorded_policy_refusal() {
    let env = Env::new();
    env.setup("auto");
    let query = "SELECT COUNT(*) AS n FROM people WHERE ssn LIKE '900%'";
    let out = env.veil(&sql_args("submit", query, "0.5"));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("forbidden"), "{err}");
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    assert!(audit.contains("job_refused"), "{audit}");
}

/// Over HTTP: a SQL manifest without a module is submitted, approved by the holder (who sees
/// the query) and released.
#[test]
fn a_sql_manifest_runs_over_http_with_approval() {
    let env = Env::new();
    env.setup("manual");
    let consumer = token_for(&env, CONSUMER, "consumer");
    let holder = token_for(&env, HOLDER, "holder");
    let server = Server::start(&env.data_dir(), &[]);
    let http = Http::new(&server);
    let manifest = format!(
        "dataset = \"people\"\npurpose = \"wages\"\nsql = \"{QUERY}\"\nepsilon = 0.5\n\n\
         [weights]\nmean_income = 2\n"
    );
    let submitted = http.submit(&consumer, &manifest, &[]);
    let id = submitted["id"].as_str().unwrap().to_owned();
    assert_eq!(submitted["state"], "awaiting_approval", "{submitted}");
    let shown = http.json(&format!("/v1/jobs/{id}"), &holder);
    assert!(shown.to_string().contains("AVG(weekly_income)"), "{shown}");
    let (status, text) = http.call(
        "POST",
        &format!("/v1/jobs/{id}/approve"),
        Some(&holder),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let released = http.json(&format!("/v1/jobs/{id}?wait=30"), &consumer);
    assert_eq!(released["state"], "released", "{released}");
    let result = http.json(&format!("/v1/jobs/{id}/result"), &consumer);
    assert_eq!(result["rows"].as_array().unwrap().len(), 2, "{result}");
}

/// The same question asked as a module job (examples/income-by-education: each person's mean
/// income in their education level) and as SQL: the released counts and means agree within
/// their intervals (the intervals overlap; that each covers the exact answer 95% of the time is
/// `sql_intervals_cover_the_exact_answers`).
#[test]
fn a_sql_job_and_the_module_job_for_the_same_question_agree() {
    let env = Env::new();
    env.setup_with_policy(&policy("auto").replace("epsilon_total = 1.5", "epsilon_total = 10"));
    let manifest = env.write("module.toml", &income_manifest(1.0));
    let module_job = seeded(
        &env,
        21,
        &[
            "--as",
            CONSUMER,
            "job",
            "submit",
            manifest.to_str().unwrap(),
        ],
    );
    let sql = "SELECT CASE WHEN educ <= 11 THEN 'below high school' WHEN educ = 12 THEN \
               'high school' WHEN educ <= 15 THEN 'some college' WHEN educ = 16 THEN 'bachelor' \
               ELSE 'graduate' END AS education, COUNT(*) AS people, \
               AVG(weekly_income) AS weekly_income FROM people GROUP BY education";
    let sql_manifest = env.write(
        "sql.toml",
        &format!(
            "dataset = \"people\"\nsql = \"{sql}\"\nepsilon = 1.0\n\n[bounds]\n\
             weekly_income = [0, 2000]\n"
        ),
    );
    let sql_job = seeded(
        &env,
        22,
        &[
            "--as",
            CONSUMER,
            "job",
            "submit",
            sql_manifest.to_str().unwrap(),
        ],
    );
    let (module, sql) = (
        result_of(&env, module_job.trim()),
        result_of(&env, sql_job.trim()),
    );
    let rows = |r: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row["key"][0].as_str().unwrap().to_owned(), row.clone()))
            .collect()
    };
    let overlap = |a: &serde_json::Value, b: &serde_json::Value| {
        let (a0, a1) = (
            a["ci95"][0].as_f64().unwrap(),
            a["ci95"][1].as_f64().unwrap(),
        );
        let (b0, b1) = (
            b["ci95"][0].as_f64().unwrap(),
            b["ci95"][1].as_f64().unwrap(),
        );
        a0 <= b1 && b0 <= a1
    };
    let (module_rows, sql_rows) = (rows(&module), rows(&sql));
    for key in ["high school", "bachelor"] {
        let m = &module_rows.iter().find(|(k, _)| k == key).expect(key).1;
        let s = &sql_rows.iter().find(|(k, _)| k == key).expect(key).1;
        assert!(overlap(&m["units"], &s["units"]), "{key}: {m} vs {s}");
        let (mm, sm) = (&m["values"][0]["mean"], &s["values"][0]["mean"]);
        assert!(overlap(mm, sm), "{key}: {mm} vs {sm}");
    }
}

/// A dataset without a privacy unit counts each row as one unit; a query that names no column
/// (`COUNT(*)` alone) still reads the rows.
#[test]
fn a_dataset_without_a_privacy_unit_counts_rows() {
    let env = Env::new();
    env.add_parties();
    let csv = env.write("rows.csv", &people_csv());
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        csv.to_str().unwrap(),
        "--name",
        "people",
    ]);
    let policy = policy("auto")
        .replace("privacy_unit = \"person_id\"\n", "")
        .replace("max_units = 500", "max_units = 1000")
        .replace("[columns]", "[columns]\nperson_id = { class = \"quasi\" }");
    assert!(env.set_policy("p.toml", &policy).status.success());
    let job = submit_sql(&env, 5, "SELECT COUNT(*) AS n FROM people", "1");
    let result = result_of(&env, &job);
    // 603 rows: 402 people, the 201 with an odd id have two.
    assert!(within(&result["rows"][0]["units"], 603.0), "{result}");
}

/// A waiting SQL job whose query no longer plans against the dataset's new version (a column's
/// type changed) is refused at its start with the planner's reason, not retried.
#[test]
fn a_query_that_no_longer_plans_is_refused_at_start() {
    let env = Env::new();
    env.setup("manual");
    let manifest = env.write(
        "y.toml",
        "dataset = \"people\"\nsql = \"SELECT educ, SUM(year) AS y FROM people GROUP BY educ\"\n\
         epsilon = 0.5\n\n[bounds]\ny = [2000, 2030]\n",
    );
    let job = env.ok(&[
        "--as",
        CONSUMER,
        "job",
        "submit",
        manifest.to_str().unwrap(),
    ]);
    let job = job.trim();
    let text_years = people_csv()
        .replace(",2022,", ",y2022,")
        .replace(",2023,", ",y2023,");
    let csv = env.write("v2.csv", &text_years);
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        csv.to_str().unwrap(),
        "--name",
        "people",
        "--privacy-unit",
        "person_id",
        "--replace",
    ]);
    let out = env.veil(&["--as", HOLDER, "job", "approve", job]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let status = env.ok(&["--as", CONSUMER, "job", "status", job]);
    assert!(status.contains("refused"), "{status} / {said}");
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    assert!(
        audit.contains("no longer applies to the current version"),
        "{said}"
    );
}

/// The people policy with `public_tables` declared (a top-level key, before the tables).
fn policy_with_public_tables(tables: &str) -> String {
    policy("auto").replacen(
        "approval = \"auto\"",
        &format!("approval = \"auto\"\npublic_tables = [{tables}]"),
        1,
    )
}

/// Registers `csv` as the holder's dataset `name`, without a privacy unit (a public table).
fn add_public_table(env: &Env, name: &str, csv: &str) {
    let path = env.write(&format!("{name}.csv"), csv);
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        path.to_str().unwrap(),
        "--name",
        name,
    ]);
}

/// A public lookup table the holder declares: a SQL job groups people by a column of it, the
/// release covers the exact counts, the catalog shows the table's columns and the audit names
/// the version the job read.
#[test]
fn a_public_lookup_table_joins_through_the_gate() {
    let env = Env::new();
    env.setup("auto");
    add_public_table(
        &env,
        "states",
        "state,region\nCA,West\nNY,East\nTX,South\nOH,Midwest\n",
    );
    let out = env.set_policy("p.toml", &policy_with_public_tables("\"states\""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let query = "SELECT s.region AS region, COUNT(*) AS people FROM people p \
                 JOIN states s ON p.state = s.state GROUP BY s.region ORDER BY region";
    let job = submit_sql(&env, 21, query, "1");
    let result = result_of(&env, &job);
    let rows = result["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"][0].as_str().unwrap()).collect();
    assert_eq!(keys, ["East", "Midwest", "South", "West"], "{result}");
    // People by state: id % 4 over 402 ids — CA and NY 101 each, TX and OH 100 each. Four
    // 95% intervals miss one in five times, so each cell is held to `near` (three half-widths).
    for (row, exact) in rows.iter().zip([101.0, 100.0, 100.0, 101.0]) {
        assert!(near(&row["units"], exact), "{row}");
    }
    let catalog = env.ok(&["--as", CONSUMER, "dataset", "list", "--format", "json"]);
    assert!(
        catalog.contains("\"public_tables\"") && catalog.contains("clinic:states"),
        "the consumer sees which tables it may join: {catalog}"
    );
    assert!(!catalog.contains("Midwest"), "never a public table's rows");
    let audit = env.ok(&["audit", "log", "--format", "json"]);
    let started = audit
        .lines()
        .find(|l| l.contains("job_started") && l.contains(&job))
        .expect("job_started");
    assert!(
        started.contains("\"public_tables\"") && started.contains("clinic:states"),
        "{started}"
    );
}

/// A policy may declare only the holder's own datasets public, and a lookup whose join key
/// repeats is refused before anything is recorded or spent.
#[test]
fn public_tables_are_the_holders_own_and_joined_on_unique_keys() {
    let env = Env::new();
    env.setup("auto");
    let out = env.set_policy("p.toml", &policy_with_public_tables("\"nowhere\""));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("public_tables") && err.contains("nowhere"),
        "{err}"
    );
    let out = env.set_policy("p.toml", &policy_with_public_tables("\"people\""));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("this dataset itself"));

    add_public_table(
        &env,
        "states",
        "state,region\nCA,West\nCA,Pacific\nNY,East\n",
    );
    let out = env.set_policy("p.toml", &policy_with_public_tables("\"states\""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = env.snapshot();
    let query = "SELECT s.region AS region, COUNT(*) AS people FROM people p \
                 JOIN states s ON p.state = s.state GROUP BY s.region";
    for command in ["check", "submit"] {
        let out = env.veil(&sql_args(command, query, "0.5"));
        assert!(!out.status.success(), "{command}");
        let err = text(&out.stderr);
        assert!(err.contains("two rows with the same `state`"), "{err}");
    }
    assert_eq!(env.snapshot(), before, "refused joins changed nothing");
}

/// Two datasets of one holder about the same people join on their privacy unit through a link
/// the holder proposes (accepted at once): the job counts each person once across both, and is
/// charged on both datasets.
#[test]
fn one_holders_datasets_join_on_their_privacy_unit() {
    let env = Env::new();
    // Tight row bounds: a linked job is scheduled for each person's rows on one side times
    // theirs on the other.
    env.setup_with_policy(
        &policy("auto").replace("max_units = 500", "max_units = 500\nmax_rows_per_unit = 2"),
    );
    // Visits: the first 100 people, each with 3 visits costing 40.
    let mut visits = String::from("person_id,cost\n");
    for id in 0..100 {
        visits += &format!("{id},40\n{id},40\n{id},40\n");
    }
    let path = env.write("visits.csv", &visits);
    env.ok(&[
        "--as",
        HOLDER,
        "dataset",
        "add",
        path.to_str().unwrap(),
        "--name",
        "visits",
        "--privacy-unit",
        "person_id",
    ]);
    let visits_policy = policy("auto")
        .replace(
            "min_units_per_group = 20",
            "min_units_per_group = 5\nmax_rows_per_unit = 3",
        )
        .split("[columns]")
        .next()
        .unwrap()
        .to_owned()
        + "[columns]\ncost = { class = \"sensitive\", bounds = [0, 200] }\n";
    let p = env.write("visits.toml", &visits_policy);
    env.ok(&[
        "--as",
        HOLDER,
        "policy",
        "set",
        "visits",
        p.to_str().unwrap(),
    ]);
    let linked = env.ok(&[
        "--as",
        HOLDER,
        "link",
        "propose",
        "people",
        "--key",
        "person_id",
        "--with",
        "clinic:visits",
        "--their-key",
        "person_id",
    ]);
    assert!(
        linked.contains("accepted"),
        "one holder's link is accepted at once: {linked}"
    );
    let query = "SELECT p.educ AS educ, COUNT(*) AS people, SUM(v.cost) AS spent \
                 FROM people p JOIN visits v USING (person_id) GROUP BY p.educ ORDER BY educ";
    let job = submit_sql(&env, 5, query, "1");
    let result = result_of(&env, &job);
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "both education groups are released: {result}"
    );
    // People 0..100 have visits, 3 of 40 each: 50 with educ 12 (even ids, one row in
    // `people`: 120 each) and 50 with educ 16 (odd ids, two rows: the join pairs each with every
    // visit, 240 each, clamped to the bounds' 200) — ordinary SQL, bounded per person.
    for (row, (educ, people, spent)) in rows
        .iter()
        .zip([("12", 50.0, 6_000.0), ("16", 50.0, 10_000.0)])
    {
        assert_eq!(row["key"][0], educ, "{result}");
        assert!(near(&row["units"], people), "{row}");
        assert!(near(&row["values"][0]["sum"], spent), "{row}");
    }
    let budget = env.ok(&["--as", CONSUMER, "budget", "--format", "json"]);
    assert!(
        budget.contains("clinic:people") && budget.contains("clinic:visits"),
        "{budget}"
    );
}
