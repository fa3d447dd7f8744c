//! Rendering a released result as a table (for people) or CSV (for machines); JSON is the release
//! itself. Both come from one [`Layout`], derived from every row, so a group whose mean is null,
//! an empty public partition or any mix of value kinds never shifts a cell under another header.
use veil_engine::{NoisyCell, Release, ReleasedValue};

/// Which statistic of a value a column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stat {
    Quantile,
    Mean,
    Sum,
    Variance,
    StdDev,
}

/// The columns of a grouped release: per value, the statistics that any row carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    /// `(value index, statistic)` in column order.
    pub columns: Vec<(usize, Stat)>,
}

impl Layout {
    pub(crate) fn of(r: &Release) -> Layout {
        let values = r.rows.iter().map(|row| row.values.len()).max().unwrap_or(0);
        let mut columns = Vec::new();
        for j in 0..values {
            for stat in [
                Stat::Quantile,
                Stat::Mean,
                Stat::Sum,
                Stat::Variance,
                Stat::StdDev,
            ] {
                if r.rows
                    .iter()
                    .any(|row| row.values.get(j).is_some_and(|v| has(v, stat)))
                {
                    columns.push((j, stat));
                }
            }
        }
        Layout { columns }
    }
}

fn has(v: &ReleasedValue, stat: Stat) -> bool {
    match stat {
        Stat::Quantile => v.quantile.is_some(),
        Stat::Mean => v.mean.is_some(),
        Stat::Sum => v.sum.is_some(),
        Stat::Variance => v.variance.is_some(),
        Stat::StdDev => v.stddev.is_some(),
    }
}

/// The interval cell of a value's statistic, for the statistics that are plain cells.
fn plain_cell(v: &ReleasedValue, stat: Stat) -> Option<&NoisyCell> {
    match stat {
        Stat::Sum => v.sum.as_ref(),
        Stat::Variance => v.variance.as_ref(),
        Stat::StdDev => v.stddev.as_ref(),
        Stat::Quantile | Stat::Mean => None,
    }
}

/// The word a statistic's column is headed with.
fn stat_word(stat: Stat) -> &'static str {
    match stat {
        Stat::Quantile => "quantile",
        Stat::Mean => "mean",
        Stat::Sum => "sum",
        Stat::Variance => "variance",
        Stat::StdDev => "stddev",
    }
}

/// The name of value `j` (from the first row that has it).
fn value_name(r: &Release, j: usize) -> String {
    r.rows
        .iter()
        .find_map(|row| row.values.get(j).map(|v| v.name.clone()))
        .unwrap_or_default()
}

/// A number as people read it: whole numbers without decimals, others to the fixed-point grid.
pub(crate) fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        // Released values are on the 0.001 grid; the shortest form shows exactly that.
        format!("{}", (x * 1000.0).round() / 1000.0)
    }
}

/// ε or δ as people read them: `0.5`, `1e-8`.
pub(crate) fn fmt_param(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn with_interval(c: &NoisyCell) -> String {
    format!(
        "{} [{}, {}]",
        fmt_num(c.value),
        fmt_num(c.ci95[0]),
        fmt_num(c.ci95[1])
    )
}

/// A table: a header and rows of exactly as many cells.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The unit count's column name: the SQL query's name for it, else `units`.
fn units_name(r: &Release) -> &str {
    r.count_name.as_deref().unwrap_or("units")
}

/// What a missing statistic shows (a mean of a group whose noisy count is below 1).
pub(crate) const MISSING: &str = "—";

/// The grouped release as a table: keys, the unit count, then the layout's columns.
pub(crate) fn table(r: &Release) -> Table {
    let layout = Layout::of(r);
    let mut header: Vec<String> = r.key_names.clone();
    header.push(format!("{} (95% CI)", units_name(r)));
    for &(j, stat) in &layout.columns {
        let name = value_name(r, j);
        header.push(match stat {
            Stat::Quantile => {
                let q = r
                    .rows
                    .iter()
                    .find_map(|row| row.values[j].quantile.as_ref());
                let (q, bin) = q.map(|q| (q.q, q.bin_width)).unwrap_or_default();
                format!("{name} q{} (bin {})", fmt_num(q), fmt_num(bin))
            }
            other => format!("{name} {} (95% CI)", stat_word(other)),
        });
    }
    let rows = r
        .rows
        .iter()
        .map(|row| {
            let mut cells = row.key.clone();
            cells.push(with_interval(&row.units));
            for &(j, stat) in &layout.columns {
                cells.push(row.values.get(j).map_or(MISSING.into(), |v| cell(v, stat)));
            }
            cells
        })
        .collect();
    Table { header, rows }
}

fn cell(v: &ReleasedValue, stat: Stat) -> String {
    let text = match stat {
        Stat::Quantile => v.quantile.as_ref().map(|q| fmt_num(q.value)),
        Stat::Mean => v.mean.as_ref().map(|m| match m.cell() {
            Some(c) => with_interval(c),
            None => fmt_num(m.value()),
        }),
        other => plain_cell(v, other).map(with_interval),
    };
    text.unwrap_or_else(|| MISSING.into())
}

/// The table as aligned text, widths measured in characters.
pub(crate) fn table_text(t: &Table) -> String {
    let widths: Vec<usize> = (0..t.header.len())
        .map(|i| {
            t.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([t.header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&t.header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out += &(rule.join("  ") + "\n");
    for row in &t.rows {
        out += &line(row);
    }
    out
}

/// The lines under a grouped table: the noise of each kind of cell, ε, δ and the rule.
fn footer(r: &Release) -> String {
    let mut out = String::new();
    match r.rows.first() {
        Some(first) => {
            let mut scales = vec![format!("units ±{}", fmt_num(first.units.noise_scale))];
            for v in &first.values {
                if let Some(sum) = &v.sum {
                    scales.push(format!("{} sum ±{}", v.name, fmt_num(sum.noise_scale)));
                }
                if let Some(q) = &v.quantile {
                    scales.push(format!("{} bins ±{}", v.name, fmt_num(q.noise_scale)));
                }
            }
            out += &format!(
                "noise: {}, scale per cell: {}\n",
                r.mechanism,
                scales.join(", ")
            );
        }
        None => out += "no group passed the release threshold\n",
    }
    out += &format!(
        "ε = {}, δ = {}; {}\n",
        fmt_param(r.epsilon),
        fmt_param(r.delta),
        r.suppression_rule
    );
    out
}

/// A sample-and-aggregate release: one estimate per value.
fn estimates_text(r: &Release) -> String {
    let mut t = Table {
        header: ["value", "estimate (95% CI)", "blocks", "clamp range"]
            .map(String::from)
            .to_vec(),
        rows: Vec::new(),
    };
    for e in &r.estimates {
        t.rows.push(vec![
            e.name.clone(),
            with_interval(&e.estimate),
            e.blocks.to_string(),
            format!("[{}, {}]", fmt_num(e.bounds[0]), fmt_num(e.bounds[1])),
        ]);
    }
    let scales: Vec<String> = r
        .estimates
        .iter()
        .map(|e| format!("{} ±{}", e.name, fmt_num(e.estimate.noise_scale)))
        .collect();
    table_text(&t)
        + &format!("noise: {}, scale: {}\n", r.mechanism, scales.join(", "))
        + &format!(
            "ε = {}, δ = {}; {}\n",
            fmt_param(r.epsilon),
            fmt_param(r.delta),
            r.suppression_rule
        )
}

/// The release as people read it.
pub(crate) fn text(r: &Release) -> String {
    if !r.estimates.is_empty() {
        return estimates_text(r);
    }
    table_text(&table(r)) + &footer(r)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(cells: &[String]) -> String {
    let fields: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
    fields.join(",") + "\n"
}

/// Numbers of one cell in CSV: value, interval, scale; empty fields when it is missing.
fn csv_cell(c: Option<&NoisyCell>) -> [String; 4] {
    match c {
        Some(c) => [c.value, c.ci95[0], c.ci95[1], c.noise_scale].map(|x| x.to_string()),
        None => Default::default(),
    }
}

/// The release as CSV: the table's columns, each cell split into value, interval and scale.
pub(crate) fn csv(r: &Release) -> String {
    if !r.estimates.is_empty() {
        return estimates_csv(r);
    }
    let layout = Layout::of(r);
    let mut header: Vec<String> = r.key_names.clone();
    let parts = ["", "_ci95_low", "_ci95_high", "_noise_scale"];
    header.extend(parts.map(|p| format!("{}{p}", units_name(r))));
    for &(j, stat) in &layout.columns {
        let name = value_name(r, j);
        match stat {
            Stat::Quantile => header.push(format!("{name}_quantile")),
            other => {
                let word = stat_word(other);
                header.extend(parts.map(|p| format!("{name}_{word}{p}")));
            }
        }
    }
    let mut out = csv_line(&header);
    for row in &r.rows {
        let mut cells = row.key.clone();
        cells.extend(csv_cell(Some(&row.units)));
        for &(j, stat) in &layout.columns {
            let v = row.values.get(j);
            match stat {
                Stat::Quantile => cells.push(
                    v.and_then(|v| v.quantile.as_ref())
                        .map(|q| q.value.to_string())
                        .unwrap_or_default(),
                ),
                Stat::Mean => {
                    let mean = v.and_then(|v| v.mean.as_ref());
                    let mut four = csv_cell(mean.and_then(|m| m.cell()));
                    if let Some(m) = mean {
                        four[0] = m.value().to_string();
                    }
                    cells.extend(four);
                }
                other => cells.extend(csv_cell(v.and_then(|v| plain_cell(v, other)))),
            }
        }
        out += &csv_line(&cells);
    }
    out
}

fn estimates_csv(r: &Release) -> String {
    let mut out =
        "value,estimate,ci95_low,ci95_high,noise_scale,blocks,clamp_low,clamp_high\n".to_owned();
    for e in &r.estimates {
        let mut cells = vec![e.name.clone()];
        cells.extend(csv_cell(Some(&e.estimate)));
        cells.push(e.blocks.to_string());
        cells.extend(e.bounds.map(|b| b.to_string()));
        out += &csv_line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use veil_engine::{Mean, QuantileCell, ReleasedRow, ReleasedValue};

    fn noisy(rng: &mut ChaCha20Rng) -> NoisyCell {
        let v = f64::from(rng.random_range(-5000..5000)) / 1000.0;
        NoisyCell {
            value: v,
            mechanism: "discrete Laplace".into(),
            noise_scale: 2.0,
            ci95: [v - 1.5, v + 1.5],
        }
    }

    /// A release whose value `j` is of kind `kinds[j]` (0 sum, 1 mean, 2 quantile) and whose
    /// cells are randomly missing where a real release can lack them (means of empty groups) —
    /// and, to check the printer does not trust the shape, anywhere else too.
    fn random_release(rng: &mut ChaCha20Rng) -> Release {
        let values = rng.random_range(0..4);
        let kinds: Vec<u8> = (0..values).map(|_| rng.random_range(0..5)).collect();
        let rows = (0..rng.random_range(0..6))
            .map(|g| ReleasedRow {
                key: vec![format!("g{g}")],
                units: noisy(rng),
                values: kinds
                    .iter()
                    .enumerate()
                    .map(|(j, kind)| {
                        let present = rng.random_bool(0.7);
                        ReleasedValue {
                            name: format!("v{j}"),
                            sum: (*kind < 2 && (present || *kind == 1)).then(|| noisy(rng)),
                            mean: (*kind == 1 && present).then(|| Mean::Cell(noisy(rng))),
                            quantile: (*kind == 2 && present).then(|| QuantileCell {
                                q: 0.5,
                                value: 1.25,
                                mechanism: "discrete Laplace".into(),
                                noise_scale: 3.0,
                                bin_width: 0.5,
                            }),
                            variance: (*kind == 3 && present).then(|| noisy(rng)),
                            stddev: (*kind == 4 && present).then(|| noisy(rng)),
                        }
                    })
                    .collect(),
            })
            .collect();
        Release {
            key_names: vec!["group".into()],
            rows,
            mechanism: "discrete Laplace".into(),
            epsilon: 0.5,
            delta: 0.0,
            suppression_rule: "none".into(),
            granularity: 0.001,
            estimates: Vec::new(),
            count_name: None,
        }
    }

    /// What the cell under `header` must show for value `v`.
    fn expected(v: &ReleasedValue, header: &str) -> String {
        let stat = if header.ends_with("mean (95% CI)") {
            Stat::Mean
        } else if header.ends_with("sum (95% CI)") {
            Stat::Sum
        } else if header.ends_with("variance (95% CI)") {
            Stat::Variance
        } else if header.ends_with("stddev (95% CI)") {
            Stat::StdDev
        } else {
            Stat::Quantile
        };
        cell(v, stat)
    }

    #[test]
    fn every_row_has_every_column_under_the_right_header() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        for _ in 0..2000 {
            let r = random_release(&mut rng);
            let t = table(&r);
            let text = text(&r); // must not panic
            assert!(text.contains("ε = 0.5"));
            let csv = csv(&r);
            let csv_columns = csv.lines().next().unwrap().split(',').count();
            for (row, cells) in r.rows.iter().zip(&t.rows) {
                assert_eq!(cells.len(), t.header.len(), "{t:?}");
                assert_eq!(cells[0], row.key[0]);
                for (h, c) in t.header.iter().zip(cells).skip(2) {
                    let name = h.split(' ').next().unwrap();
                    let v = row.values.iter().find(|v| v.name == name).unwrap();
                    assert_eq!(*c, expected(v, h), "{h} in {t:?}");
                }
            }
            for line in csv.lines().skip(1) {
                assert_eq!(line.split(',').count(), csv_columns, "{csv}");
            }
        }
    }

    #[test]
    fn numbers_print_without_float_artefacts() {
        assert_eq!(fmt_num(660.6370000000001), "660.637");
        assert_eq!(fmt_num(12.0), "12");
        assert_eq!(fmt_param(1e-8), "1e-8");
        assert_eq!(fmt_param(0.5), "0.5");
    }
}
