//! Rendering for people (tables) and machines (JSON, CSV).
use veil_engine::{AuditEntry, BudgetLine, IngestReport, JobInfo, JobView, Registered, Release};

/// The line that confirms a registration, then the report on the file's columns (for the holder).
pub fn registered(registered: &Registered) {
    let r = &registered.record;
    let version = match r.version {
        1 => String::new(),
        v => format!(" version {v}"),
    };
    println!(
        "registered dataset `{}`{version}: {} rows, {} columns, content sha256 {}, commitment {}",
        r.name,
        r.rows,
        r.columns.len(),
        r.content_hash,
        r.content_commitment
    );
    if let Some(why) = &registered.policy_suspended {
        println!(
            "the policy no longer applies and must be set again (`veil policy set`): {}",
            escape(why)
        );
    }
    report(&registered.report);
}

/// The registration report: per column its type, nulls, distinct values and range.
fn report(report: &IngestReport) {
    println!("column report (for you only; consumers never see it):");
    for c in &report.columns {
        let distinct = match (c.distinct, c.distinct_capped) {
            (Some(n), false) => format!("  distinct={n}"),
            (Some(n), true) => format!("  distinct>{n}"),
            (None, _) => String::new(),
        };
        let range = c
            .range
            .map(|[lo, hi]| format!("  range=[{lo}, {hi}]"))
            .unwrap_or_default();
        let padded = match (c.padded, report.trimmed) {
            (0, _) => String::new(),
            (n, true) => format!("  padded={n} (trimmed)"),
            (n, false) => format!("  padded={n}"),
        };
        println!(
            "  {:<24} {:<8} nulls={}{distinct}{range}{padded}",
            escape(&c.name),
            c.data_type,
            c.nulls
        );
        for w in report.warnings_for(&c.name) {
            println!("    warning: {}", escape(&w));
        }
    }
}

/// Catalog entries as the caller may see them: the full record for owners, reviewers and the
/// operator; the consumer's view (no row count, no content hash) otherwise.
pub fn datasets(list: &[serde_json::Value], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).expect("serializes")
        );
        return;
    }
    if list.is_empty() {
        println!("no datasets registered");
    }
    for d in list {
        let text = |f: &str| d[f].as_str().map(escape).unwrap_or_default();
        let rows = match (d["rows"].as_u64(), d["units"]["noisy"].as_u64()) {
            (Some(r), _) => format!("  rows={r}"),
            // A consumer sees at most the policy's noisy unit count, with its interval.
            (None, Some(n)) => format!(
                "  units≈{n} (95% CI {}–{}, ε = {})",
                d["units"]["ci95"][0], d["units"]["ci95"][1], d["units"]["epsilon"]
            ),
            (None, None) => String::new(),
        };
        println!(
            "{}  owner={}{rows}  privacy_unit={}",
            text("name"),
            text("owner"),
            d["privacy_unit"]
                .as_str()
                .map(escape)
                .unwrap_or("(row)".into())
        );
        if d["content_hash"].is_string() {
            println!("  content sha256 {}", text("content_hash"));
        }
        println!("  content commitment {}", text("content_commitment"));
        let cols: Vec<String> = d["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}: {}",
                    escape(c["name"].as_str().unwrap_or_default()),
                    escape(c["type"].as_str().unwrap_or_default())
                )
            })
            .collect();
        println!("  schema  {}", cols.join(", "));
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`, ...), so that nothing a principal
/// typed — a purpose, a reason, a name — can move a reader's terminal cursor or forge a line.
pub fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn budget(consumer: &str, lines: &[BudgetLine], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(lines).expect("serializes")
        );
        return;
    }
    if lines.is_empty() {
        println!("`{consumer}` may use no dataset");
    }
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "dataset", "spent ε", "left ε", "total ε", "per job", "spent δ", "total δ"
    );
    for l in lines {
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            l.dataset, l.spent, l.remaining, l.total, l.per_job_cap, l.delta_spent, l.delta_total
        );
    }
    for l in lines {
        if let Some(published) = &l.published {
            println!(
                "`{}`: its published unit count took ε = {published} of the total",
                l.dataset
            );
        }
    }
}

fn event_summary(e: &AuditEntry) -> (String, String) {
    let value = serde_json::to_value(&e.event).expect("serializes");
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("?")
        .to_owned();
    let mut parts = Vec::new();
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            if k == "kind" {
                continue;
            }
            let text = match v {
                serde_json::Value::String(s)
                    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    format!("{}…", &s[..12])
                }
                serde_json::Value::String(s) => escape(s),
                other => other.to_string(),
            };
            parts.push(format!("{k}={text}"));
        }
    }
    (kind, parts.join(" "))
}

pub fn audit_log(entries: &[AuditEntry], json: bool) {
    for e in entries {
        if json {
            println!("{}", e.to_line());
        } else {
            let (kind, detail) = event_summary(e);
            println!("{:>5}  {}  {:<20} {}", e.index, e.time, kind, detail);
        }
    }
}

pub fn audit_summary(s: &veil_audit::review::Summary, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).expect("serializes"));
        return;
    }
    let eps = |m: u64| veil_engine::Epsilon(m).to_string();
    println!("{} entries", s.entries);
    println!("\nε spent per consumer and dataset:");
    for l in &s.spending {
        let steps: Vec<String> = l
            .over_time
            .iter()
            .map(|(t, m)| format!("{} → {}", &t[..t.len().min(19)], eps(*m)))
            .collect();
        println!(
            "  {:<16} {:<16} {} of {} in {} jobs  ({})",
            l.consumer,
            l.dataset,
            eps(l.spent_micro),
            eps(l.total_micro),
            l.jobs_started,
            steps.join(", ")
        );
    }
    println!("\njobs by outcome:");
    for (o, n) in &s.jobs_by_outcome {
        println!("  {o:<20} {n}");
    }
    println!("\nrefusals by reason:");
    for (r, n) in &s.refusals {
        println!("  {n:>4}  {}", escape(r));
    }
    println!("\nanomalies:");
    if s.anomalies.is_empty() {
        println!("  none");
    }
    for a in &s.anomalies {
        println!("  ! {}", escape(a));
    }
}

pub fn job_details(j: &JobInfo) {
    println!("job            {}", j.id);
    println!(
        "state          {}{}",
        j.state,
        j.code
            .as_ref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    );
    println!("consumer       {}", j.consumer);
    println!("dataset        {}", j.dataset);
    println!("module sha256  {}", j.module_hash);
    println!("manifest sha256 {}", j.manifest_hash);
    println!("requested ε    {}", j.epsilon);
    if let Some(h) = &j.result_hash {
        println!("result sha256  {h}");
    }
    println!("manifest:");
    for line in j.manifest.lines() {
        println!("  {}", escape(line));
    }
}

/// One line for a job: its id, state and reason code as the caller sees them.
pub fn job_line(view: &JobView) {
    match view.code() {
        Some(code) => println!("{} {} ({code})", view.id(), view.state()),
        None => println!("{} {}", view.id(), view.state()),
    }
}

/// A job's details as the caller may see them: the holder's and reviewer's metadata, or a
/// consumer's coarse view as JSON.
pub fn job_view(view: &JobView) -> anyhow::Result<()> {
    match view {
        JobView::Full(info) => job_details(info),
        JobView::Consumer(v) => println!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

/// Jobs as the caller may see them: a table of metadata, or a consumer's job lines.
pub fn job_views(views: &[JobView]) -> anyhow::Result<()> {
    let full: Vec<JobInfo> = views
        .iter()
        .filter_map(|v| match v {
            JobView::Full(info) => Some(info.clone()),
            JobView::Consumer(_) => None,
        })
        .collect();
    if full.len() == views.len() {
        job_list(&full);
    } else {
        views.iter().for_each(job_line);
    }
    Ok(())
}

pub fn job_list(jobs: &[JobInfo]) {
    if jobs.is_empty() {
        println!("no jobs");
    }
    for j in jobs {
        println!(
            "{}  {:<18} consumer={} dataset={} ε={} module={}…",
            j.id,
            format!(
                "{}{}",
                j.state,
                j.code
                    .as_ref()
                    .map(|c| format!("({c})"))
                    .unwrap_or_default()
            ),
            j.consumer,
            j.dataset,
            j.epsilon,
            &j.module_hash[..12]
        );
    }
}

/// A released result in the chosen format.
pub fn release(r: &Release, format: crate::Format) {
    match format {
        crate::Format::Table => print!("{}", crate::release::text(r)),
        crate::Format::Json => println!("{}", serde_json::to_string_pretty(r).expect("serializes")),
        crate::Format::Csv => print!("{}", crate::release::csv(r)),
    }
}

/// `job check` for people: the verdict, then each released cell's noise and the withholding
/// rule, then what could not be checked.
pub fn job_check(c: &veil_engine::JobCheck) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let approval = match c.approval {
        veil_engine::Approval::Manual => "waits for the holder's approval",
        veil_engine::Approval::Auto => "runs without approval",
    };
    match (&c.refusal, &c.forecast) {
        (Some(reason), _) => {
            let _ = writeln!(out, "would be refused: {}", escape(reason));
        }
        (None, Some(f)) => {
            let _ = writeln!(
                out,
                "admissible on `{}`; {approval}; would spend ε = {} δ = {}",
                c.dataset, f.epsilon, f.delta
            );
            if let (Some(e), Some(d)) = (c.epsilon_left_after, c.delta_left_after) {
                let _ = writeln!(out, "budget left after it: ε = {e} δ = {d}");
            }
            forecast(&mut out, f);
        }
        (None, None) => {}
    }
    for note in &c.notes {
        let _ = writeln!(out, "note: {}", escape(note));
    }
    out
}

fn forecast(out: &mut String, f: &veil_engine::Forecast) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "noise: {} (weights: count {} of {})",
        f.mechanism, f.count_weight, f.total_weight
    );
    let cell = |c: &veil_engine::CellForecast| {
        format!(
            "scale {}  95% interval ±{}",
            c.noise_scale, c.ci95_half_width
        )
    };
    if let Some(units) = &f.units {
        let _ = writeln!(out, "  {:<24} {}", "units (count)", cell(units));
    }
    for v in &f.values {
        let name = format!("{} ({}, weight {})", escape(&v.name), v.aggregate, v.weight);
        if let Some(q) = &v.quantile_bins {
            let _ = writeln!(
                out,
                "  {name:<24} q = {}: bin counts scale {}, bin width {}",
                q.q, q.bin_noise_scale, q.bin_width
            );
        }
        if let Some(sum) = &v.sum {
            let _ = writeln!(out, "  {name:<24} sum: {}", cell(sum));
        }
        if let Some(n) = &v.mean_numerator {
            let _ = writeln!(
                out,
                "  {:<24} mean: scale {} / noisy count, clamped to [{}, {}]",
                "", n.noise_scale, v.bounds[0], v.bounds[1]
            );
        }
    }
    match (f.threshold, f.groups) {
        (Some(t), _) => {
            let _ = writeln!(out, "groups with a noisy unit count below {t} are withheld");
        }
        (None, Some(g)) => {
            let _ = writeln!(out, "all {g} groups are released, empty ones included");
        }
        (None, None) => {}
    }
}
