use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::SeedableRng;

use super::*;
use crate::manifest::{JobManifest, precheck};
use crate::model::Policy;
use crate::sql::{Coverage, Partner};

const POLICY: &str = r#"
privacy_unit = "person_id"
consumers = ["acme"]
approval = "auto"
min_units_per_group = 1
max_groups_per_unit = 1
[dp]
epsilon_per_job = 1.0
epsilon_total = 3.0
[columns]
educ = { class = "public" }
region = { class = "public" }
income = { class = "sensitive", bounds = [0, 5000] }
ssn = { class = "forbidden" }
"#;

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new("educ", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("income", DataType::Float64, true),
        Field::new("ssn", DataType::Utf8, true),
    ])
}

fn spec(text: &str) -> SqlSpec {
    SqlSpec {
        text: text.into(),
        bounds: Default::default(),
        weights: Default::default(),
    }
}

fn shape_of(text: &str) -> Result<Shape> {
    let policy = Policy::from_toml(POLICY).unwrap();
    shape(
        &spec(text),
        "clinic:people",
        &schema(),
        &policy,
        &Tables::default(),
    )
}

#[test]
fn a_grouped_query_releases_its_keys_counts_and_values() {
    let s = shape_of(
        "SELECT educ, COUNT(*) AS people, AVG(income) AS mean_income, SUM(income) AS total \
         FROM people WHERE region = 'north' GROUP BY educ",
    )
    .unwrap();
    assert_eq!(s.keys, ["educ"]);
    let names: Vec<&str> = s.values.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["mean_income", "total"]);
    assert_eq!(s.values[0].aggregate, Aggregate::Mean);
    assert_eq!(s.values[0].bounds, (0.0, 5000.0), "the policy's bounds");
    assert_eq!(s.values[1].aggregate, Aggregate::Sum);
    assert_eq!(s.plan.per_unit, [PerUnit::Mean, PerUnit::Sum]);
    assert_eq!(s.columns, ["educ", "income", "region"]);
    assert_eq!(s.plan.tables, ["people", "clinic:people"]);
}

#[test]
fn derived_keys_declared_bounds_weights_and_quantiles() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let mut sql = spec(
        "SELECT CASE WHEN income > 1000 THEN 'high' ELSE 'low' END AS band, \
         COUNT(DISTINCT person_id) AS n, SUM(income / 1000) AS k, MEDIAN(income) AS med, \
         COUNT(region) AS with_region FROM \"clinic:people\" AS p GROUP BY band",
    );
    sql.bounds.insert("k".into(), (0.0, 5.0));
    sql.weights.insert("n".into(), 3);
    sql.weights.insert("k".into(), 2);
    let s = shape(
        &sql,
        "clinic:people",
        &schema(),
        &policy,
        &Tables::default(),
    )
    .unwrap();
    assert_eq!(s.keys, ["band"]);
    assert_eq!(s.count_weight, 3);
    assert_eq!(s.values[0].bounds, (0.0, 5.0));
    assert_eq!(s.values[0].weight, 2);
    assert_eq!(s.values[1].aggregate, Aggregate::Quantile(500_000));
    assert_eq!(
        s.values[2].bounds,
        (0.0, 1.0),
        "COUNT(x) is an indicator per person"
    );
    assert_eq!(
        s.plan.per_unit,
        [PerUnit::Sum, PerUnit::Mean, PerUnit::Count]
    );
}

/// Every refused construct: (query, a phrase its message must hold).
const REFUSED: &[(&str, &str)] = &[
    ("SELECT income FROM people", "releases rows"),
    ("SELECT * FROM people", "releases rows"),
    ("SELECT DISTINCT educ FROM people", "DISTINCT"),
    (
        "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ ORDER BY region",
        "ORDER BY",
    ),
    (
        "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ ORDER BY SUM(income)",
        "ORDER BY names selected outputs",
    ),
    ("SELECT COUNT(*) AS n FROM people LIMIT -1", "LIMIT"),
    (
        "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ HAVING SUM(income) > 3",
        "compares selected outputs",
    ),
    (
        "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ HAVING COUNT(*) + 1 > 3",
        "compares selected outputs",
    ),
    (
        "SELECT COUNT(*) AS n FROM people a JOIN people b ON a.person_id = b.person_id",
        "joins",
    ),
    (
        "SELECT COUNT(*) AS n FROM (SELECT educ FROM people) t",
        "subqueries",
    ),
    (
        "SELECT COUNT(*) AS n FROM people WHERE income > (SELECT AVG(income) FROM people)",
        "subqueries",
    ),
    (
        "SELECT COUNT(*) AS n FROM people WHERE educ IN (SELECT educ FROM people)",
        "subqueries",
    ),
    ("SELECT COUNT(*) AS n FROM other", "reads only its dataset"),
    (
        "SELECT COUNT(*) AS n FROM information_schema.tables",
        "reads only its dataset",
    ),
    (
        "SELECT COUNT(*) AS n FROM generate_series(1, 10)",
        "table functions",
    ),
    (
        "SELECT COUNT(*) AS n FROM '/etc/passwd'",
        "reads only its dataset",
    ),
    (
        "SELECT COUNT(*) AS n FROM people; SELECT COUNT(*) AS m FROM people",
        "2 statements",
    ),
    ("CREATE TABLE t (a INT)", "not a SELECT"),
    ("DROP TABLE people", "not a SELECT"),
    ("INSERT INTO people VALUES (1)", "not a SELECT"),
    ("COPY people TO '/tmp/x.csv'", "not a query"),
    (
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "not a query",
    ),
    ("EXPLAIN SELECT COUNT(*) FROM people", "not a query"),
    (
        "SELECT educ, ROW_NUMBER() OVER (ORDER BY educ) AS r FROM people",
        "row_number",
    ),
    (
        "SELECT SUM(income) / 2 AS half FROM people",
        "computed from aggregates",
    ),
    (
        "SELECT educ, COUNT(*) AS n FROM people GROUP BY educ, region",
        "not in the SELECT list",
    ),
    (
        "SELECT upper(educ), COUNT(*) AS n FROM people GROUP BY upper(educ)",
        "needs a name",
    ),
    (
        "SELECT COUNT(DISTINCT educ) AS n FROM people",
        "COUNT(DISTINCT",
    ),
    (
        "SELECT VAR_SAMP(income * 1000) AS v FROM people",
        "needs bounds",
    ),
    ("SELECT SUM(income * 2) AS s FROM people", "needs bounds"),
    (
        "SELECT random() > 0.5 AS coin, COUNT(*) AS n FROM people GROUP BY coin",
        "`random` is not available",
    ),
    ("SELECT COUNT(*) AS n, COUNT(1) AS m FROM people", "twice"),
    (
        "SELECT PERCENTILE_CONT(income, 1.5) AS p FROM people",
        "between 0 and 1",
    ),
    (
        "SELECT COUNT(*) AS n FROM people -- a comment\n; DROP TABLE people",
        "2 statements",
    ),
    ("SELEC COUNT(*) FROM people", "does not parse"),
    (
        "SELECT SUM(CAST(income AS DECIMAL(10, 2))) AS s FROM people",
        "DECIMAL",
    ),
    (
        "SELECT COUNT(*) AS n FROM people WHERE repeat(educ, 3) = 'x'",
        "`repeat` is not available",
    ),
    (
        "SELECT COUNT(*) AS n FROM people WHERE to_timestamp(educ) > now()",
        "`to_timestamp`",
    ),
    ("", "0 statements"),
    // Row work that could grow without bound, which the fixed release time cannot cover.
    (
        "SELECT replace(region, '', 'xxxxxxxxxx') AS k, COUNT(*) AS n FROM people GROUP BY k",
        "non-empty text literal to search for",
    ),
    (
        "SELECT replace(region, 'a', educ) AS k, COUNT(*) AS n FROM people GROUP BY k",
        "a text literal to put in its place",
    ),
    (
        "SELECT COUNT(*) AS n FROM people \
         WHERE length(replace(replace(region, 'a', 'aaaaa'), 'a', 'aaaaa')) > 3",
        "25× longer",
    ),
    (
        "SELECT concat(region, '__LONG__') AS k, COUNT(*) AS n FROM people GROUP BY k",
        "a text literal of 300 bytes",
    ),
];

/// Text functions whose growth is bounded pass: 4 × 4 = 16 nested, a literal of 256 bytes.
#[test]
fn bounded_text_growth_is_accepted() {
    for query in [
        "SELECT replace(replace(region, 'a', 'aaaa'), 'b', 'bbbb') AS k, COUNT(*) AS n \
         FROM people GROUP BY k",
        "SELECT replace(region, 'north', 'N') AS k, COUNT(*) AS n FROM people GROUP BY k",
        "SELECT concat(region, '__MAX__') AS k, COUNT(*) AS n FROM people GROUP BY k",
    ] {
        let query = query.replace("__MAX__", &"y".repeat(256));
        assert!(shape_of(&query).is_ok(), "{query}: {:?}", shape_of(&query));
    }
}

#[test]
fn unsupported_constructs_are_refused_naming_them() {
    for (query, phrase) in REFUSED {
        let query = &query.replace("__LONG__", &"x".repeat(300));
        match shape_of(query) {
            Err(e @ PolicyError::Invalid { .. }) => {
                let text = e.to_string();
                assert!(
                    text.to_lowercase().contains(&phrase.to_lowercase()),
                    "{query}: {text}"
                );
            }
            other => panic!("{query}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn the_policy_decides_columns_and_the_unit_is_only_counted() {
    for (query, phrase) in [
        (
            "SELECT COUNT(*) AS n FROM people WHERE ssn = '1'",
            "forbidden",
        ),
        (
            "SELECT person_id, COUNT(*) AS n FROM people GROUP BY person_id",
            "privacy unit",
        ),
        (
            "SELECT COUNT(*) AS n FROM people WHERE person_id < 10",
            "privacy unit",
        ),
        ("SELECT SUM(person_id) AS s FROM people", "privacy unit"),
    ] {
        match shape_of(query) {
            Err(PolicyError::Refused(m)) => assert!(m.contains(phrase), "{query}: {m}"),
            other => panic!("{query}: expected a policy refusal, got {other:?}"),
        }
    }
}

#[test]
fn long_and_deep_queries_are_refused_before_parsing() {
    let deep = format!(
        "SELECT COUNT(*) AS n FROM people WHERE {}income{} > 1",
        "(".repeat(200),
        ")".repeat(200)
    );
    assert!(shape_of(&deep).unwrap_err().to_string().contains("deep"));
    let long = format!(
        "SELECT COUNT(*) AS n FROM people WHERE educ IN ({})",
        vec!["'x'"; 10_000].join(",")
    );
    assert!(
        shape_of(&long)
            .unwrap_err()
            .to_string()
            .contains("bytes long")
    );
}

/// Bounded fuzzing: mutated queries plan or fail with an error, never a panic.
#[test]
fn mutated_queries_plan_or_fail_cleanly() {
    let base = "SELECT educ, COUNT(*) AS n, AVG(income) AS m FROM people WHERE region = 'n' \
                GROUP BY educ";
    let mut m = veil_abi::mutation::Mutator::new(0x5e1);
    for _ in 0..1500 {
        let bytes = m.mutate(base.as_bytes());
        let _ = shape_of(&String::from_utf8_lossy(&bytes));
    }
}

fn people_table() -> Arc<MemTable> {
    let batch = RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(Int64Array::from(vec![1, 1, 2, 3, 3, 3])),
            Arc::new(StringArray::from(vec!["a", "a", "a", "b", "b", "a"])),
            Arc::new(StringArray::from(vec!["n"; 6])),
            Arc::new(Float64Array::from(vec![
                Some(100.0),
                Some(300.0),
                None,
                Some(7000.0),
                Some(10.0),
                Some(50.0),
            ])),
            Arc::new(StringArray::from(vec!["x"; 6])),
        ],
    )
    .unwrap();
    Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap())
}

/// The rewrite yields one row per (unit, group) with the unit's own aggregate of its rows.
#[tokio::test]
async fn the_rewrite_gives_each_unit_one_row_per_group() {
    let s = shape_of(
        "SELECT educ, SUM(income) AS total, AVG(income) AS mean FROM people GROUP BY educ",
    )
    .unwrap();
    let rows = text_rows(&contributions_of(&s.plan).await);
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "1 a 400.0 200.0",
            "2 a 0.0 0.0",
            "3 a 50.0 50.0",
            "3 b 7010.0 3505.0",
        ],
        "unclamped here: the Bounder clamps"
    );
}

async fn contributions_of(plan: &SqlPlan) -> Vec<RecordBatch> {
    let (logical, _) = rewrite::contributions(plan, people_table(), &Tables::default()).unwrap();
    SessionContext::new()
        .execute_logical_plan(logical)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// A person in more groups than `max_groups_per_unit` keeps a uniformly random choice of them,
/// not the first the data lists: over 400 releases of one person in groups `a` and `b` with a
/// limit of one group, each is kept about half the time (binomial, n = 400, p = 1/2: a count
/// outside [150, 250] has probability below 10⁻⁶).
#[tokio::test]
async fn the_group_limit_keeps_a_random_choice() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let manifest = JobManifest::from_toml(
        "dataset = \"clinic:people\"\nsql = \"SELECT educ, COUNT(*) AS n FROM people GROUP BY educ\"\nepsilon = 1.0\n",
    )
    .unwrap();
    let plan = precheck(&policy, &manifest, &schema(), "acme").unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(Int64Array::from(vec![3, 3])),
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(StringArray::from(vec!["n"; 2])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(StringArray::from(vec!["x"; 2])),
        ],
    )
    .unwrap();
    let table = Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap());
    let (logical, _) =
        rewrite::contributions(plan.sql.as_ref().unwrap(), table, &Tables::default()).unwrap();
    let batches = SessionContext::new()
        .execute_logical_plan(logical)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let mut kept_a = 0;
    for _ in 0..400 {
        let bounder = rewrite::bound(&plan, &batches, &mut rng).unwrap();
        let (exact, stats) = crate::gate::aggregate(&plan, vec![bounder]).await.unwrap();
        assert_eq!(stats.over_group_limit_dropped, 1);
        if exact.groups.contains_key(&vec!["a".to_owned()]) {
            kept_a += 1;
        }
    }
    assert!(
        (150..=250).contains(&kept_a),
        "kept `a` {kept_a} of 400 times"
    );
}

/// Expressions that would fail on some rows (a cast that does not convert, a division by zero)
/// give NULL instead, so whether a job runs never depends on the data.
#[tokio::test]
async fn failing_row_expressions_are_null_not_errors() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let mut sql = spec(
        "SELECT educ, SUM(CAST(educ AS BIGINT)) AS cast_sum, \
         SUM(CAST(income AS BIGINT) / (CAST(income AS BIGINT) - CAST(income AS BIGINT))) AS div \
         FROM people WHERE CAST(region AS INT) IS NULL OR 1 % 0 = 1 GROUP BY educ",
    );
    sql.bounds.insert("cast_sum".into(), (0.0, 10.0));
    sql.bounds.insert("div".into(), (0.0, 10.0));
    let s = shape(
        &sql,
        "clinic:people",
        &schema(),
        &policy,
        &Tables::default(),
    )
    .unwrap();
    let batches = contributions_of(&s.plan).await;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 4, "every (unit, group) present, values NULL → 0");
    for b in &batches {
        for j in [2, 3] {
            let v = b.column(j).as_any().downcast_ref::<Float64Array>().unwrap();
            assert!(v.iter().all(|x| x == Some(0.0)), "{v:?}");
        }
    }
}

/// HAVING, ORDER BY and LIMIT act on the noisy release: every released row satisfies the
/// condition on its released cells, rows come in the asked order, and no more than the limit.
#[tokio::test]
async fn having_order_and_limit_post_process_the_release() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let manifest = JobManifest::from_toml(
        "dataset = \"clinic:people\"\nsql = \"SELECT region, educ, COUNT(*) AS n, \
         SUM(income) AS s FROM people GROUP BY region, educ HAVING COUNT(*) > -100 AND \
         educ <> 'zzz' ORDER BY n DESC, educ LIMIT 5 OFFSET 0\"\nepsilon = 1.0\n",
    )
    .unwrap();
    let plan = precheck(&policy, &manifest, &schema(), "acme").unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    for _ in 0..20 {
        let (release, _) = release(&plan, people_table(), &Tables::default(), &mut rng)
            .await
            .unwrap();
        assert!(release.rows.len() <= 5);
        for pair in release.rows.windows(2) {
            assert!(pair[0].units.value >= pair[1].units.value, "{release:?}");
        }
        for row in &release.rows {
            assert!(row.units.value > -100.0);
        }
    }
    let limited = JobManifest::from_toml(
        "dataset = \"clinic:people\"\nsql = \"SELECT educ, COUNT(*) AS n FROM people GROUP BY \
         educ HAVING COUNT(*) < -1000000\"\nepsilon = 1.0\n",
    )
    .unwrap();
    let plan = precheck(&policy, &limited, &schema(), "acme").unwrap();
    let (release, _) = release(&plan, people_table(), &Tables::default(), &mut rng)
        .await
        .unwrap();
    assert!(release.rows.is_empty(), "no noisy count is below -10⁶");
}

/// VARIANCE and STDDEV release one cell each, computed from a mean and a sum of squared
/// deviations (two gate statistics); the cell's interval holds the released value, within the
/// range a variance can take.
#[tokio::test]
async fn variance_and_stddev_are_released_as_one_cell_each() {
    let policy = Policy::from_toml(POLICY).unwrap();
    let manifest = JobManifest::from_toml(
        "dataset = \"clinic:people\"\nsql = \"SELECT educ, VAR_POP(income) AS v, \
         STDDEV(income) AS sd FROM people GROUP BY educ\"\nepsilon = 1.0\n",
    )
    .unwrap();
    let plan = precheck(&policy, &manifest, &schema(), "acme").unwrap();
    let names: Vec<&str> = plan.values.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["v", "v__squares", "sd", "sd__squares"]);
    assert_eq!(plan.values[1].hi, 2500 * 2500 * crate::fixed::SCALE);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let (release, _) = release(&plan, people_table(), &Tables::default(), &mut rng)
        .await
        .unwrap();
    for row in &release.rows {
        assert_eq!(row.values.len(), 2, "{row:?}");
        assert_eq!(row.values[0].name, "v");
        assert!(row.values[0].stddev.is_none() && row.values[1].variance.is_none());
        for (cell, cap) in [
            (row.values[0].variance.as_ref(), 2500.0 * 2500.0),
            (row.values[1].stddev.as_ref(), 2500.0 * 2f64.sqrt()),
        ] {
            let Some(c) = cell else { continue };
            assert!(c.ci95[0] <= c.value && c.value <= c.ci95[1], "{c:?}");
            assert!(c.ci95[0] >= 0.0 && c.ci95[1] <= cap + 1.0, "{c:?}");
        }
    }
}

/// A public table of education levels, as the holder's policy declares it.
fn levels(codes: &[&str]) -> Lookup {
    let schema = Arc::new(Schema::new(vec![
        Field::new("level", DataType::Utf8, true),
        Field::new("label", DataType::Utf8, false),
        Field::new("person_id", DataType::Int64, false),
    ]));
    let labels: Vec<String> = codes.iter().map(|c| format!("level-{c}")).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(codes.to_vec())),
            Arc::new(StringArray::from(labels)),
            Arc::new(Int64Array::from(vec![7; codes.len()])),
        ],
    )
    .unwrap();
    Lookup {
        dataset: "clinic:levels".into(),
        schema,
        batches: vec![batch],
    }
}

fn shape_with_levels(text: &str, lookup: &Lookup) -> Result<Shape> {
    let policy = Policy::from_toml(POLICY).unwrap();
    shape(
        &spec(text),
        "clinic:people",
        &schema(),
        &policy,
        &Tables {
            lookups: std::slice::from_ref(lookup),
            ..Tables::default()
        },
    )
}

#[test]
fn a_lookup_join_adds_public_columns_only() {
    let lookup = levels(&["a", "b"]);
    for query in [
        "SELECT l.label AS label, COUNT(*) AS n, AVG(p.income) AS mean FROM people p \
         JOIN levels l ON p.educ = l.level GROUP BY l.label",
        "SELECT label, COUNT(*) AS n, AVG(income) AS mean FROM people \
         LEFT JOIN \"clinic:levels\" ON \"clinic:levels\".level = upper(people.educ) AND people.region = 'n' \
         GROUP BY label",
    ] {
        let s = shape_with_levels(query, &lookup).unwrap();
        assert_eq!(s.keys, ["label"], "{query}");
        assert_eq!(s.plan.lookups, ["clinic:levels"], "{query}");
        assert_eq!(s.lookup_rows, 2);
        assert!(
            !s.columns.contains(&"label".to_owned()) && s.columns.contains(&"income".to_owned()),
            "only the dataset's columns are read from it: {:?}",
            s.columns
        );
        assert_eq!(s.values[0].bounds, (0.0, 5000.0), "the policy's bounds");
    }
    // A lookup's column named like the privacy unit is the lookup's, not the unit.
    let s = shape_with_levels(
        "SELECT l.person_id AS code, COUNT(*) AS n FROM people p JOIN levels l \
         ON p.educ = l.level GROUP BY l.person_id",
        &lookup,
    )
    .unwrap();
    assert_eq!(s.keys, ["code"]);
}

#[test]
fn lookup_joins_that_could_leak_or_multiply_rows_are_refused() {
    let lookup = levels(&["a", "b"]);
    for (query, phrase) in [
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM levels l JOIN people p \
             ON p.educ = l.level GROUP BY l.label",
            "start from the dataset",
        ),
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM people p RIGHT JOIN levels l \
             ON p.educ = l.level GROUP BY l.label",
            "right join is not supported",
        ),
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM people p FULL JOIN levels l \
             ON p.educ = l.level GROUP BY l.label",
            "full join is not supported",
        ),
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN levels l \
             ON p.educ < l.level GROUP BY l.label",
            "needs an equality",
        ),
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM people p CROSS JOIN levels l \
             GROUP BY l.label",
            "needs an equality",
        ),
        (
            "SELECT q.educ AS e, COUNT(*) AS n FROM people p JOIN people q \
             ON p.educ = q.educ GROUP BY q.educ",
            "not a public table",
        ),
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN other l \
             ON p.educ = l.level GROUP BY l.label",
            "the tables it may join: `levels`",
        ),
        (
            "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN levels l \
             ON p.educ = l.level AND random() > 0.5 GROUP BY l.label",
            "is not available",
        ),
    ] {
        match shape_with_levels(query, &lookup) {
            Err(e @ PolicyError::Invalid { .. }) => {
                let text = e.to_string().to_lowercase();
                assert!(text.contains(&phrase.to_lowercase()), "{query}: {text}");
            }
            other => panic!("{query}: expected a refusal, got {other:?}"),
        }
    }
    // Joining on the privacy unit would let a public table group people one by one.
    match shape_with_levels(
        "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN levels l \
         ON p.person_id = l.person_id GROUP BY l.label",
        &lookup,
    ) {
        Err(PolicyError::Refused(m)) => assert!(m.contains("privacy unit"), "{m}"),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    // A key that repeats in the public table would count a person's row twice.
    let repeated = levels(&["a", "b", "a"]);
    let e = shape_with_levels(
        "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN levels l \
         ON p.educ = l.level GROUP BY l.label",
        &repeated,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("two rows with the same `level`"),
        "{e}"
    );
    // Without the declaration there is nothing to join.
    let e = shape_of(
        "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN levels l \
         ON p.educ = l.level GROUP BY l.label",
    )
    .unwrap_err();
    assert!(e.to_string().contains("reads only its dataset"), "{e}");
    assert!(
        e.to_string()
            .contains("its policy declares no public tables to join"),
        "{e}"
    );
}

/// A misspelt public table is refused with the tables the policy declares, so the consumer
/// can fix the name (not only the tables the query happened to name).
#[test]
fn a_misspelt_public_table_names_the_declared_ones() {
    let policy = Policy::from_toml(&format!(
        "public_tables = [\"clinic:levels\", \"clinic:regions\"]\n{POLICY}"
    ))
    .unwrap();
    let e = shape(
        &spec(
            "SELECT l.label AS label, COUNT(*) AS n FROM people p JOIN levls l \
             ON p.educ = l.level GROUP BY l.label",
        ),
        "clinic:people",
        &schema(),
        &policy,
        &Tables::default(),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("the query reads `levls`"), "{text}");
    assert!(
        text.contains("the tables it may join: `levels`, `regions`"),
        "{text}"
    );
    assert!(matches!(e, PolicyError::Invalid { .. }), "bad input: {e:?}");
}

/// The joined run: each person's rows carry the lookup's label, one row per (person, label),
/// and a dataset row without a match keeps a NULL label under LEFT JOIN (unclamped here: the
/// Bounder clamps).
#[tokio::test]
async fn a_lookup_join_runs_per_person() {
    let lookup = levels(&["a"]);
    for (join, expected) in [
        ("JOIN", vec!["1 level-a 400.0", "3 level-a 50.0"]),
        (
            "LEFT JOIN",
            vec![
                "1 level-a 400.0",
                "2 NULL 0.0",
                "3 NULL 7010.0",
                "3 level-a 50.0",
            ],
        ),
    ] {
        let query = format!(
            "SELECT l.label AS label, SUM(p.income) AS total FROM people p {join} levels l \
             ON p.educ = l.level AND p.income IS NOT NULL GROUP BY l.label"
        );
        let s = shape_with_levels(&query, &lookup).unwrap();
        let (logical, _) = rewrite::contributions(
            &s.plan,
            people_table(),
            &Tables {
                lookups: std::slice::from_ref(&lookup),
                ..Tables::default()
            },
        )
        .unwrap();
        let batches = SessionContext::new()
            .execute_logical_plan(logical)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = text_rows(&batches);
        rows.sort();
        // Person 2's only row has a NULL income and person 3's `b` rows no level: the inner
        // join drops them; the left join keeps them with a NULL label.
        assert_eq!(rows, expected, "{join}");
    }
}

fn text_rows(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let cols: Vec<_> = (0..b.num_columns())
                .map(|i| datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8).unwrap())
                .collect();
            (0..b.num_rows())
                .map(|r| {
                    cols.iter()
                        .map(|c| c.as_any().downcast_ref::<StringArray>().unwrap().value(r))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The insurer's claims, linked to `people` on `person_id` ↔ `token`.
fn claims_partner() -> Partner {
    let schema = Arc::new(Schema::new(vec![
        Field::new("token", DataType::Int64, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("diagnosis", DataType::Utf8, true),
    ]));
    let policy = Policy::from_toml(
        r#"
privacy_unit = "token"
consumers = ["acme"]
approval = "manual"
min_units_per_group = 9
max_groups_per_unit = 3
max_rows_per_unit = 4
[dp]
epsilon_per_job = 0.5
epsilon_total = 2.0
[columns]
amount = { class = "sensitive", bounds = [0, 900] }
diagnosis = { class = "forbidden" }
"#,
    )
    .unwrap();
    Partner {
        dataset: "insurer:claims".into(),
        key: "person_id".into(),
        partner_key: "token".into(),
        policy,
        table: Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap()),
    }
}

fn shape_linked(text: &str) -> Result<Shape> {
    let policy = Policy::from_toml(POLICY).unwrap();
    let partner = claims_partner();
    shape(
        &spec(text),
        "clinic:people",
        &schema(),
        &policy,
        &Tables {
            partners: std::slice::from_ref(&partner),
            ..Tables::default()
        },
    )
}

#[test]
fn a_linked_query_runs_under_both_policies() {
    for (join, coverage) in [
        ("JOIN", Coverage::Inner),
        ("LEFT JOIN", Coverage::Left),
        ("FULL JOIN", Coverage::Full),
    ] {
        let s = shape_linked(&format!(
            "SELECT p.educ AS educ, COUNT(*) AS n, SUM(c.amount) AS paid FROM people p \
             {join} \"insurer:claims\" c ON p.person_id = c.token GROUP BY p.educ"
        ))
        .unwrap();
        let link = s.plan.link.as_ref().unwrap();
        assert_eq!(link.coverage, coverage);
        assert_eq!(link.partner, "insurer:claims");
        assert_eq!(link.partner_columns, ["amount"]);
        assert_eq!(s.columns, ["educ"], "the job dataset's columns only");
        assert_eq!(s.plan.unit, "person_id");
        assert_eq!(s.values[0].bounds, (0.0, 900.0), "the partner's bounds");
        // The conjunction: the stricter of each limit, manual if either is.
        assert_eq!(s.policy.min_units_per_group, 9);
        assert_eq!(s.policy.max_groups_per_unit, 1);
        assert_eq!(s.policy.epsilon_per_job.as_f64(), 0.5);
        assert_eq!(s.policy.approval, crate::model::Approval::Manual);
    }
}

#[test]
fn linked_queries_that_could_leak_are_refused() {
    for (query, phrase) in [
        (
            "SELECT COUNT(*) AS n FROM people p JOIN \"insurer:claims\" c \
             ON p.person_id = c.token AND c.amount > 10",
            "joins on its link key and nothing else",
        ),
        (
            "SELECT COUNT(*) AS n FROM people p JOIN \"insurer:claims\" c ON p.educ = c.diagnosis",
            "joins on its link key and nothing else",
        ),
        (
            "SELECT COUNT(*) AS n FROM people p RIGHT JOIN \"insurer:claims\" c \
             ON p.person_id = c.token",
            "right join of a linked dataset",
        ),
        (
            "SELECT COUNT(*) AS n FROM people p JOIN \"insurer:claims\" c \
             ON p.person_id = c.token JOIN \"insurer:claims\" d ON p.person_id = d.token",
            "at most one linked dataset",
        ),
    ] {
        match shape_linked(query) {
            Err(e @ PolicyError::Invalid { .. }) => {
                let text = e.to_string().to_lowercase();
                assert!(text.contains(&phrase.to_lowercase()), "{query}: {text}");
            }
            other => panic!("{query}: expected a refusal, got {other:?}"),
        }
    }
    for (query, phrase) in [
        (
            "SELECT c.token AS t, COUNT(*) AS n FROM people p JOIN \"insurer:claims\" c \
             ON p.person_id = c.token GROUP BY c.token",
            "privacy unit",
        ),
        (
            "SELECT c.diagnosis AS d, COUNT(*) AS n FROM people p JOIN \"insurer:claims\" c \
             ON p.person_id = c.token GROUP BY c.diagnosis",
            "forbidden by its holder's policy",
        ),
    ] {
        match shape_linked(query) {
            Err(PolicyError::Refused(m)) => assert!(m.contains(phrase), "{query}: {m}"),
            other => panic!("{query}: expected a policy refusal, got {other:?}"),
        }
    }
}

/// The engine reads only the public tables a query names.
#[test]
fn referenced_tables_are_read_from_the_query_text() {
    assert_eq!(
        referenced_tables(
            "SELECT l.label AS label, COUNT(*) AS n FROM people p \
             JOIN \"clinic:levels\" l ON p.educ = l.level LEFT JOIN regions r USING (region) \
             GROUP BY l.label"
        ),
        ["people", "clinic:levels", "regions"]
    );
    assert!(referenced_tables("SELEKT (( nope").is_empty());
    assert_eq!(
        referenced_tables("SELECT COUNT(*) AS n FROM people"),
        ["people"]
    );
}
