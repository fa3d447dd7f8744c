//! `veil demo`: the whole pipeline on a synthetic census, narrated.
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veil_engine::{Caller, EngineConfig, EngineError, JobState, Role, Veil};

const MARKER: &str = ".veil-demo";
const HOLDER: &str = "census-bureau";
const CONSUMER: &str = "acme-research";

/// States with rough population weights, so that regions differ in size.
const STATES: &[(&str, u32)] = &[
    ("CA", 39),
    ("TX", 29),
    ("FL", 22),
    ("NY", 20),
    ("PA", 13),
    ("IL", 13),
    ("OH", 12),
    ("GA", 11),
    ("NC", 10),
    ("MI", 10),
    ("NJ", 9),
    ("VA", 9),
    ("WA", 8),
    ("AZ", 7),
    ("MA", 7),
    ("TN", 7),
    ("MN", 6),
    ("CO", 6),
    ("OR", 4),
    ("NV", 3),
    ("IA", 3),
    ("NE", 2),
    ("VT", 1),
    ("WY", 1),
];

/// Writes a synthetic census: one row per person and year (1–3 years each), with a person id,
/// state, age, years of education, weekly income and an SSN-like identifier the policy forbids.
pub fn write_census(path: &Path, people: usize, seed: u64) -> Result<u64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let total_weight: u32 = STATES.iter().map(|s| s.1).sum();
    let mut out = String::with_capacity(people * 120);
    out.push_str("person_id,year,state,age,educ,weekly_income,ssn\n");
    let mut rows = 0;
    for id in 1..=people {
        let mut pick = rng.random_range(0..total_weight);
        let state = STATES
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("weights cover range")
            .0;
        let age: i64 = rng.random_range(16..=90);
        let educ: i64 = match rng.random_range(0..100) {
            0..=9 => rng.random_range(6..=11),
            10..=39 => 12,
            40..=64 => rng.random_range(13..=15),
            65..=84 => 16,
            _ => rng.random_range(17..=20),
        };
        // Log-normal income rising with schooling and experience.
        let experience = (age - educ - 6).max(0) as f64;
        let log_mean =
            5.4 + 0.09 * educ as f64 + 0.03 * experience - 0.0005 * experience * experience;
        let ssn = format!(
            "{:03}-{:02}-{:04}",
            rng.random_range(1..900),
            rng.random_range(1..100),
            rng.random_range(1..10_000)
        );
        for year in 2021..2021 + rng.random_range(1..=3) {
            let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let income = (log_mean + 0.45 * normal).exp();
            writeln!(out, "{id},{year},{state},{age},{educ},{income:.2},{ssn}")
                .expect("writing to a String");
            rows += 1;
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(rows)
}

const POLICY_AUTO: &str = r#"# Release policy of the census bureau for dataset "census".
privacy_unit = "person_id"
consumers = ["acme-research"]
approval = "auto"
min_units_per_group = 50
max_groups_per_unit = 1
# Public bound on the number of people: jobs are scheduled for this many, whatever the count.
max_units = 100000

[dp]
epsilon_per_job = 1.0
epsilon_total = 1.5

[columns]
year = { class = "public" }
state = { class = "quasi" }
age = { class = "quasi", bounds = [16, 90] }
educ = { class = "public", bounds = [0, 20] }
weekly_income = { class = "sensitive", bounds = [0, 10000] }
ssn = { class = "forbidden" }
"#;

const INCOME_MANIFEST: &str = r#"dataset = "census"
module = "modules/income_by_education.wasm"
purpose = "wage statistics by education"
columns = ["educ", "weekly_income"]
epsilon = 0.5
# Fuel per person; the release time follows from it and the policy's max_units.
fuel_per_unit = 20000

[output]
keys = ["education"]
values = [{ name = "weekly_income", bounds = [0, 5000], aggregate = "mean" }]
"#;

const REGION_MANIFEST: &str = r#"dataset = "census"
module = "modules/people_by_age_region.wasm"
purpose = "population by age band and region"
columns = ["age", "state"]
epsilon = 1.0
fuel_per_unit = 20000

[output]
keys = ["age_band", "region"]
values = [{ name = "people", bounds = [0, 1], aggregate = "sum" }]
"#;

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

pub fn run(dir: &Path, people: usize) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not made by `veil demo`; choose another --data-dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("clearing the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("demo/modules"))?;
    std::fs::write(
        dir.join(MARKER),
        "created by veil demo; `veil demo` may delete this directory\n",
    )?;
    let work = dir.join("demo");
    let t0 = Instant::now();

    step(1, "The census bureau (data holder) prepares its data.");
    let csv = work.join("census.csv");
    let rows = write_census(&csv, people, 2000)?;
    println!(
        "   Synthetic census: {people} people, {rows} yearly income records (fixed seed), in {}.",
        csv.display()
    );

    let mut veil = Veil::open(dir, EngineConfig::default())?;
    println!("   Audit signing key: {}", veil.public_key());
    // The operator creates both parties, so that `veil --as NAME ...` works on this directory
    // afterwards; their tokens (for a server) are not needed here.
    let operator = Caller::operator();
    veil.create_principal(&operator, HOLDER, Role::Holder)?;
    veil.create_principal(&operator, CONSUMER, Role::Consumer)?;
    let holder = Caller::new(HOLDER, Role::Holder);
    let consumer = Caller::new(CONSUMER, Role::Consumer);
    println!("   Principals: {HOLDER} (holder) and {CONSUMER} (consumer).");

    step(
        2,
        "The holder registers the dataset; it is stored as content-addressed Parquet.",
    );
    let record = veil
        .register_dataset(
            &holder,
            &csv,
            "census",
            Some("person_id"),
            Default::default(),
        )?
        .record;
    println!(
        "   `census`: {} rows, privacy unit person_id, content commitment {}…",
        record.rows,
        &record.content_commitment[..16]
    );

    step(
        3,
        "The holder sets a release policy: acme-research may use it, ssn is forbidden, ε ≤ 1 per job, 1.5 in total.",
    );
    let policy_path = work.join("census-policy.toml");
    std::fs::write(&policy_path, POLICY_AUTO)?;
    let p = veil.set_policy(&holder, "census", &policy_path)?;
    println!(
        "   Policy version {} (sha256 {}…), jobs run without approval.",
        p.version,
        &p.hash[..16]
    );

    veil_examples::write_all(&work.join("modules"))?;
    std::fs::write(work.join("income.toml"), INCOME_MANIFEST)?;
    std::fs::write(work.join("regions.toml"), REGION_MANIFEST)?;

    step(
        4,
        "acme-research (consumer) submits a module: mean weekly income by education, ε = 0.5.",
    );
    let job1 = veil.submit_job(&consumer, &work.join("income.toml"))?;
    println!(
        "   {} ran in the sandbox, one fresh instance per person, and is {}.",
        job1.job, job1.state
    );
    print_release(&veil, &job1.job)?;

    step(
        5,
        "The holder switches the policy to manual approval (policy version 2).",
    );
    std::fs::write(
        &policy_path,
        POLICY_AUTO.replace("approval = \"auto\"", "approval = \"manual\""),
    )?;
    let p2 = veil.set_policy(&holder, "census", &policy_path)?;
    println!(
        "   Policy version {} now requires the holder's approval for each job.",
        p2.version
    );

    step(
        6,
        "acme-research submits a second module: people by age band and region, ε = 1.0.",
    );
    let job2 = veil.submit_job(&consumer, &work.join("regions.toml"))?;
    let info = veil.job(&job2.job)?;
    println!("   {} is {}. The holder reviews it:", job2.job, job2.state);
    println!("     module sha256 {}", info.module_hash);
    println!("     requested ε {}, columns age and state", info.epsilon);
    let state = veil.approve_job(&holder, &job2.job)?;
    println!("   Approved; the job ran and is {state}.");
    print_release(&veil, &job2.job)?;

    step(
        7,
        "acme-research tries the income job again: it would exceed the total budget.",
    );
    match veil.submit_job(&consumer, &work.join("income.toml")) {
        Err(EngineError::Refused { job, reason, .. }) => {
            println!("   {job} refused before running: {reason}");
        }
        Ok(o) => bail!("expected a budget refusal, got {} {}", o.job, o.state),
        Err(e) => return Err(e.into()),
    }
    for line in veil.budget(&consumer)? {
        println!(
            "   Budget of {CONSUMER} on `{}`: spent ε = {}, left ε = {} of {}.",
            line.dataset, line.spent, line.remaining, line.total
        );
    }

    step(
        8,
        "A security reviewer exports the signed audit log and verifies it offline.",
    );
    let export = work.join("audit.jsonl");
    std::fs::write(&export, veil.export_audit()?)?;
    let key = veil.public_key();
    let verified = veil_audit::verify_export(
        &std::fs::read_to_string(&export)?,
        &veil_audit::VerifierKey::parse(&key.to_string())?,
    )?;
    println!(
        "   {} entries, every signature and the signed Merkle checkpoint check out.",
        verified.entries
    );
    for e in veil.audit_entries()? {
        let v = serde_json::to_value(&e.event)?;
        println!("     #{:<3} {}", e.index, v["kind"].as_str().unwrap_or("?"));
    }
    println!(
        "   Verify it yourself: veil audit verify --log {} --public-key '{}'",
        export.display(),
        key
    );

    println!(
        "\nDone in {:.1} s. The store is in {} for inspection (try `veil --data-dir {} audit log`).",
        t0.elapsed().as_secs_f64(),
        dir.display(),
        dir.display()
    );
    if job1.state != JobState::Released || state != JobState::Released {
        bail!("a demo job did not release");
    }
    Ok(())
}

fn print_release(veil: &Veil, job: &str) -> Result<()> {
    let release = veil.job_result(&Caller::new(CONSUMER, Role::Consumer), job)?;
    println!();
    print!("{}", crate::release::text(&release));
    Ok(())
}
