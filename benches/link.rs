//! Join tokens (issue 17): OPRF throughput end to end on this machine — normalise, hash to the
//! group and blind (the holder's client), evaluate with the batch's DLEQ proof (the domain),
//! verify, unblind and finalise (the client again) — in batches of `veil_link::MAX_BATCH`,
//! each stage on `VEIL_BENCH_THREADS` threads (default: the machine's cores), then on one.
//!
//! `VEIL_BENCH_IDS` identifiers (default 200,000). Target: ≥ 50,000 identifiers/s on 2 cores.
//!
//! Then linking, timed by stage: two datasets of `VEIL_BENCH_LINK_PEOPLE` people each (default
//! 1,000,000; half of them on both sides) are tokenised, and a DP SQL count over their join
//! (`SELECT COUNT(*) ... JOIN ... USING (token)`, the overlap) is planned and released through
//! the gate (`veil_policy::sql::release`). Set `VEIL_BENCH_LINK_PEOPLE=0` to skip it.
//! Run with `cargo bench -p veil-benches --bench link`; figures go to benches/README.md by hand.
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use veil_link::{Evaluation, MAX_BATCH, OprfKey, Request, Token, normalise};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `f` over `items` on `threads` scoped threads, in order.
fn par_map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, &T) -> U + Sync,
) -> Vec<U> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                let f = &f;
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, t)| f(c * chunk + i, t))
                        .collect::<Vec<U>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

struct Stages {
    blind: Duration,
    evaluate: Duration,
    finish: Duration,
}

fn run(ids: &[String], key: &OprfKey, threads: usize) -> (Stages, Vec<Token>) {
    let batches: Vec<&[String]> = ids.chunks(MAX_BATCH).collect();
    let clock = Instant::now();
    let requests: Vec<Request> = par_map(&batches, threads, |i, batch| {
        let normal: Vec<String> = batch.iter().filter_map(|id| normalise(id)).collect();
        Request::new(&normal, &mut ChaCha20Rng::seed_from_u64(i as u64)).unwrap()
    });
    let blind = clock.elapsed();
    let clock = Instant::now();
    let evaluations: Vec<Evaluation> = par_map(&requests, threads, |i, r| {
        key.evaluate(
            r.blinded(),
            &mut ChaCha20Rng::seed_from_u64(1 << 32 | i as u64),
        )
        .unwrap()
    });
    let evaluate = clock.elapsed();
    let public = key.public_key();
    let clock = Instant::now();
    let pairs: Vec<(Request, Evaluation)> = requests.into_iter().zip(evaluations).collect();
    let cells: Vec<std::sync::Mutex<Option<(Request, Evaluation)>>> = pairs
        .into_iter()
        .map(|p| std::sync::Mutex::new(Some(p)))
        .collect();
    let tokens: Vec<Vec<Token>> = par_map(&cells, threads, |_, cell| {
        let (request, evaluation) = cell.lock().unwrap().take().unwrap();
        request.finish(&evaluation, &public).unwrap()
    });
    let finish = clock.elapsed();
    (
        Stages {
            blind,
            evaluate,
            finish,
        },
        tokens.into_iter().flatten().collect(),
    )
}

fn report(label: &str, n: usize, s: &Stages) {
    let total = s.blind + s.evaluate + s.finish;
    println!(
        "{label}: {n} identifiers in {:.2} s = {:.0}/s (blind {:.2} s, evaluate + proof {:.2} s, \
         verify + unblind + finalise {:.2} s)",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        s.blind.as_secs_f64(),
        s.evaluate.as_secs_f64(),
        s.finish.as_secs_f64()
    );
}

fn main() {
    let n = env_or("VEIL_BENCH_IDS", 200_000);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = env_or("VEIL_BENCH_THREADS", cores);
    let ids: Vec<String> = (0..n)
        .map(|i| format!("{:06}-{:04}", 194_501 + i / 10_000, i % 10_000))
        .collect();
    let key = OprfKey::generate(&mut ChaCha20Rng::seed_from_u64(42));
    let (stages, tokens) = run(&ids, &key, threads);
    assert_eq!(tokens.len(), n);
    report(&format!("{threads} threads"), n, &stages);
    let (single, again) = run(&ids, &key, 1);
    assert_eq!(again, tokens, "tokens do not depend on blinds or threads");
    report("1 thread", n, &single);
    let people = env_or("VEIL_BENCH_LINK_PEOPLE", 1_000_000);
    if people > 0 {
        link_and_count(people, &key, threads);
    }
}

/// Tokenises two datasets of `people` people (half shared) and times a DP count of the overlap.
fn link_and_count(people: usize, key: &OprfKey, threads: usize) {
    use std::sync::Arc;

    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;

    let side = |first: usize| -> Vec<String> {
        (first..first + people)
            .map(|i| format!("{:08}-{:04}", i / 10_000, i % 10_000))
            .collect()
    };
    let clock = Instant::now();
    let (_, left) = run(&side(0), key, threads);
    let (_, right) = run(&side(people / 2), key, threads);
    let tokenise = clock.elapsed();
    let schema = Arc::new(Schema::new(vec![
        Field::new("token", DataType::Utf8, false),
        Field::new("band", DataType::Utf8, false),
    ]));
    let table = |tokens: &[Token]| -> Arc<MemTable> {
        let batches = tokens
            .chunks(1 << 16)
            .map(|c| {
                let hex: Vec<String> = c.iter().map(Token::to_hex).collect();
                let band = StringArray::from(vec!["a"; c.len()]);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(StringArray::from(hex)), Arc::new(band)],
                )
                .unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema.clone(), vec![batches]).unwrap())
    };
    let policy = veil_policy::Policy::from_toml(&format!(
        "privacy_unit = \"token\"\nconsumers = [\"bench\"]\napproval = \"auto\"\n\
         min_units_per_group = 1\nmax_groups_per_unit = 1\nmax_rows_per_unit = 1\n\
         max_units = {people}\n[dp]\nepsilon_per_job = 1.0\nepsilon_total = 10.0\n[columns]\n\
         band = {{ class = \"public\" }}\n"
    ))
    .unwrap();
    let partner = |t: Arc<MemTable>| veil_policy::sql::Partner {
        dataset: "b:claims".into(),
        key: "token".into(),
        partner_key: "token".into(),
        policy: policy.clone(),
        table: t,
    };
    let (left, right) = (table(&left), table(&right));
    let clock = Instant::now();
    let manifest = veil_policy::JobManifest::from_toml(
        "dataset = \"a:people\"\nsql = 'SELECT COUNT(*) AS overlap FROM people p JOIN \"b:claims\" c USING (token)'\nepsilon = 1.0\n",
    )
    .unwrap();
    let planned = partner(right.clone());
    let readable = veil_policy::sql::Tables {
        partners: std::slice::from_ref(&planned),
        ..Default::default()
    };
    let plan = veil_policy::precheck_with_lookups(&policy, &manifest, &schema, &readable, "bench")
        .unwrap();
    let planning = clock.elapsed();
    let clock = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    let (release, _) = rt
        .block_on(veil_policy::sql::release(
            &plan,
            left,
            &readable,
            &mut ChaCha20Rng::seed_from_u64(9),
        ))
        .unwrap();
    let count = clock.elapsed();
    println!(
        "link {people} + {people} people ({} shared): tokenise both {:.1} s, plan {:.3} s, DP \
         overlap count {:.2} s (released {:.0})",
        people / 2,
        tokenise.as_secs_f64(),
        planning.as_secs_f64(),
        count.as_secs_f64(),
        release.rows[0].units.value
    );
}
