// The consumer's sections: results (its own jobs and their releases with intervals), asking a
// question (SQL or a module, with the cost check before spending), the catalog, the budget.
import { ApiError, enc, get, post } from './api.js';
import { download, field, h, num, show, status, table } from './dom.js';
import { intervalChart } from './chart.js';

/** A release as flat columns: keys, then value / noise scale / interval bounds of each cell. */
function releaseColumns(release) {
  const count = release.count_name || 'units';
  const cells = [[count, (row) => row.units]];
  const first = release.rows[0];
  for (const [i, v] of (first ? first.values : []).entries()) {
    for (const stat of ['sum', 'mean', 'variance', 'stddev']) {
      if (stat in v) cells.push([`${v.name}_${stat}`, (row) => row.values[i][stat]]);
    }
  }
  return { count, cells };
}

function flatRows(release) {
  const { cells } = releaseColumns(release);
  const headers = [...release.key_names];
  for (const [name] of cells) headers.push(name, `${name}_noise_scale`, `${name}_ci95_low`, `${name}_ci95_high`);
  const rows = release.rows.map((row) => {
    const out = [...row.key];
    for (const [, pick] of cells) {
      const c = pick(row);
      if (c && typeof c === 'object') out.push(c.value, c.noise_scale, c.ci95[0], c.ci95[1]);
      else out.push(c ?? null, null, null, null);
    }
    return out;
  });
  return { headers, rows };
}

function csv(headers, rows) {
  const cell = (x) => {
    const s = x === null || x === undefined ? '' : String(x);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [headers, ...rows].map((r) => r.map(cell).join(',')).join('\n') + '\n';
}

async function showRelease(job, area) {
  const release = await get(`/v1/jobs/${enc(job.id)}/result`);
  const { headers, rows } = flatRows(release);
  const { cells } = releaseColumns(release);
  const label = (row) => row.key.join(' / ') || 'all';
  const charts = cells.map(([name, pick]) => intervalChart(name, release.rows.map((row) => {
    const c = pick(row);
    return c && typeof c === 'object' ? { label: label(row), value: c.value, low: c.ci95[0], high: c.ci95[1] } : { label: label(row), value: c };
  })));
  const base = job.id;
  show(area,
    h('h3', {}, `Release of ${job.id}`),
    h('p', { class: 'muted' }, `${release.mechanism}; \u03b5 = ${release.epsilon}, \u03b4 = ${release.delta}. ${release.suppression_rule}. Every interval covers the noiseless value with probability at least 95%.`),
    h('div', { class: 'row' },
      h('button', { type: 'button', onclick: () => download(`${base}.csv`, csv(headers, rows), 'text/csv') }, 'Download CSV'),
      h('button', { type: 'button', onclick: () => download(`${base}.json`, JSON.stringify(release, null, 2), 'application/json') }, 'Download JSON'),
      h('button', { type: 'button', onclick: async () => {
        try { download(`${base}-receipt.json`, JSON.stringify(await get(`/v1/jobs/${enc(job.id)}/receipt`), null, 2), 'application/json'); }
        catch (e) { status(e.message, true); }
      } }, 'Download the signed receipt')),
    h('div', { class: 'release-table' }, table(null, headers, rows.map((r) => r.map((x) => (typeof x === 'number' ? num(x) : x ?? '\u2014'))), headers.map((_, i) => i).slice(release.key_names.length))),
    h('div', { class: 'charts' }, charts));
}

async function results() {
  const jobs = (await get('/v1/jobs')).jobs;
  const area = h('div', { id: 'release' });
  if (!jobs.length) return h('p', {}, 'You have no job yet: ask a question under \u201cAsk\u201d.');
  const rows = jobs.map((j) => [j.id, j.dataset, j.state, j.code ?? '', j.epsilon, j.created_at,
    j.state === 'released' ? h('button', { type: 'button', onclick: () => showRelease(j, area).catch((e) => status(e.message, true)) }, `View ${j.id}`) : '']);
  return h('div', {}, table('Your jobs', ['job', 'dataset', 'state', 'code', '\u03b5', 'submitted', ''], rows, [4]), area);
}

function forecastTable(check) {
  const f = check.forecast;
  if (!f) return h('p', {}, 'No forecast.');
  const rows = [];
  if (f.units) rows.push(['count of people', f.units.mechanism, num(f.units.noise_scale), `\u00b1 ${num(f.units.ci95_half_width)}`]);
  for (const v of f.values) {
    for (const [kind, c] of [['sum', v.sum], ['mean numerator', v.mean_numerator]]) {
      if (c) rows.push([`${v.name} (${kind})`, c.mechanism, num(c.noise_scale), `\u00b1 ${num(c.ci95_half_width)}`]);
    }
    if (v.quantile_bins) rows.push([`${v.name} (quantile bins)`, f.mechanism, num(v.quantile_bins.bin_noise_scale), `bin width ${num(v.quantile_bins.bin_width)}`]);
  }
  return h('div', { id: 'forecast' },
    h('p', {}, `Approval: ${check.approval}. \u03b5 left after this job: ${check.epsilon_left_after ?? '\u2014'}. ${f.suppression_rule}.`),
    table('The noise each released cell will carry', ['cell', 'mechanism', 'noise scale', '95% interval'], rows, [2, 3]),
    check.notes && check.notes.length ? h('ul', {}, check.notes.map((n) => h('li', {}, n))) : null);
}

async function ask() {
  const list = (await get('/v1/datasets')).datasets;
  if (!list.length) return h('p', {}, 'No dataset admits you yet.');
  const dataset = h('select', {}, list.map((d) => h('option', { value: d.name }, d.name)));
  const epsilon = h('input', { type: 'number', min: '0', step: 'any', value: '0.5' });
  // A first question over the chosen dataset (its short name is its table name in SQL).
  const starter = () => `SELECT COUNT(*) AS people FROM ${dataset.value.split(':').pop()}`;
  const sql = h('textarea', { rows: 6, spellcheck: 'false', 'aria-describedby': 'ask-error' }, starter());
  let edited = false;
  sql.addEventListener('input', () => { edited = true; });
  dataset.addEventListener('change', () => { if (!edited) sql.value = starter(); });
  const module = h('input', { type: 'file', accept: '.wasm,application/wasm' });
  const manifest = h('textarea', { rows: 8, spellcheck: 'false', placeholder: 'Module jobs only: the manifest (TOML, docs/jobs.md)' });
  const error = h('div', { id: 'ask-error', class: 'field-error', role: 'alert' });
  const outcome = h('div', { id: 'ask-outcome' });
  async function body(withEpsilon) {
    const file = module.files[0];
    if (file) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      let bin = '';
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { manifest: manifest.value, module: btoa(bin) };
    }
    const lines = [`dataset = ${JSON.stringify(dataset.value)}`, `sql = ${JSON.stringify(sql.value)}`];
    if (withEpsilon) lines.push(`epsilon = ${Number(epsilon.value)}`);
    return { manifest: lines.join('\n') + '\n' };
  }
  function failed(e) {
    sql.setAttribute('aria-invalid', 'true');
    error.textContent = e instanceof ApiError ? e.detail : e.message;
  }
  const check = h('button', { type: 'button', onclick: async () => {
    try {
      const c = await post('/v1/jobs/check', await body(true));
      sql.removeAttribute('aria-invalid'); error.textContent = '';
      show(outcome, c.refusal ? h('p', { class: 'field-error' }, `Would be refused: ${c.refusal}`) : null, forecastTable(c));
    } catch (e) { failed(e); }
  } }, 'Check the cost (spends nothing)');
  const submit = h('button', { type: 'button', class: 'primary', onclick: async () => {
    try {
      const j = await post('/v1/jobs', await body(true));
      sql.removeAttribute('aria-invalid'); error.textContent = '';
      show(outcome, h('p', { id: 'submitted' }, `Submitted ${j.id}: ${j.state}${j.refusal ? ` \u2014 ${j.refusal}` : ''}. Follow it under \u201cResults\u201d.`));
    } catch (e) { failed(e); }
  } }, 'Submit');
  return h('div', {},
    h('div', { class: 'row' }, h('div', {}, field('Dataset', dataset)), h('div', {}, field('\u03b5 to spend', epsilon))),
    field('SQL question (docs/sql.md)', sql), error,
    h('details', {}, h('summary', {}, 'Or upload a WebAssembly module with its manifest'),
      field('Module (.wasm)', module), field('Manifest (TOML)', manifest)),
    h('div', { class: 'row' }, check, submit), outcome);
}

async function catalog() {
  const list = (await get('/v1/datasets')).datasets;
  if (!list.length) return h('p', {}, 'No dataset admits you yet.');
  const out = [];
  for (const d of list) {
    let policyText = '';
    try { policyText = (await get(`/v1/datasets/${enc(d.name)}/policy`)).toml; } catch { policyText = '(no policy)'; }
    const keys = [...new Set(d.columns.flatMap((c) => Object.keys(c)))];
    out.push(h('section', { class: 'card' }, h('h3', {}, d.name),
      h('p', { class: 'muted' }, `Privacy unit: ${d.privacy_unit ?? '\u2014'}. Metadata only: Veil never shows rows.`),
      table('Columns', keys, d.columns.map((c) => keys.map((k) => (typeof c[k] === 'object' && c[k] !== null ? JSON.stringify(c[k]) : c[k] ?? '')))),
      d.units ? h('p', {}, `Noisy count of people: ${d.units.noisy} (95% interval ${d.units.ci95.join(' to ')}).`) : null,
      h('h4', {}, 'Release policy: classes, bounds, public partitions, budget'), h('pre', {}, policyText)));
  }
  return h('div', {}, out);
}

async function budget() {
  const lines = (await get('/v1/budget')).budget;
  return table(null, ['dataset', '\u03b5 spent', '\u03b5 left', '\u03b5 total', 'per job', '\u03b4 spent', '\u03b4 left'],
    lines.map((b) => [b.dataset, b.spent, b.remaining, b.total, b.per_job_cap, b.delta_spent, b.delta_remaining]), [1, 2, 3, 4, 5, 6]);
}

export function consumerSections() {
  return [
    { id: 'results', title: 'Results', render: results },
    { id: 'ask', title: 'Ask', render: ask },
    { id: 'catalog', title: 'Catalog', render: catalog },
    { id: 'budget', title: 'Budget', render: budget },
  ];
}
