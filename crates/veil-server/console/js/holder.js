// The holder's sections: approval queue, datasets, policy (edit, history, diffs), jobs and their
// logs, consumers' budgets.
import { ApiError, enc, get, post, api } from './api.js';
import { download, field, h, num, show, status, table } from './dom.js';
import { lineDiff } from './diff.js';
import { timeChart } from './chart.js';

async function budgetsOf(dataset) {
  return (await get(`/v1/datasets/${enc(dataset)}/budgets`)).budgets;
}

async function approvals() {
  const jobs = (await get('/v1/jobs?state=awaiting_approval')).jobs;
  if (!jobs.length) return h('p', { id: 'queue-empty' }, 'No job is waiting for your approval.');
  const ledgers = {};
  for (const d of new Set(jobs.map((j) => j.dataset))) ledgers[d] = await budgetsOf(d);
  return h('div', { id: 'queue' }, jobs.map((job) => approvalCard(job, ledgers[job.dataset])));
}

function approvalCard(job, ledger) {
  const line = ledger.find((b) => b.consumer === job.consumer);
  const after = line ? Number(line.remaining) - Number(job.epsilon) : null;
  const delta = (job.manifest.match(/^\s*delta\s*=\s*([0-9.eE+-]+)/m) || [])[1];
  const reason = h('input', { type: 'text', size: 40 });
  const card = h('article', { class: 'card', 'data-job': job.id, 'aria-label': `Job ${job.id}` },
    h('h3', {}, `${job.id} \u2014 ${job.consumer} on ${job.dataset}`),
    table(null, ['requested \u03b5', 'requested \u03b4', `\u03b5 ${job.consumer} would have left`, 'module hash', 'submitted'],
      [[job.epsilon, delta ?? 'the policy default', after === null ? '\u2014' : num(after, 6), h('code', {}, job.module_hash.slice(0, 16) + '\u2026'), job.created_at]]),
    h('h4', {}, /^\s*sql\s*=/m.test(job.manifest) ? 'Manifest with its SQL' : 'Manifest'),
    h('pre', { class: 'manifest' }, job.manifest),
    h('div', { class: 'row' },
      h('button', { type: 'button', class: 'primary approve', onclick: () => decide('approve') }, `Approve ${job.id}`),
      h('div', {}, field('Reason for rejecting (shown in the audit log)', reason)),
      h('button', { type: 'button', class: 'danger reject', onclick: () => decide('reject') }, `Reject ${job.id}`)));
  async function decide(how) {
    try {
      const body = how === 'reject' ? { reason: reason.value } : {};
      const done = await post(`/v1/jobs/${enc(job.id)}/${how}`, body);
      show(card, h('p', { class: 'decided' }, `${job.id}: ${how === 'approve' ? 'approved' : 'rejected'} (now ${done.state}).`));
      status(`${job.id} ${how === 'approve' ? 'approved' : 'rejected'}.`);
    } catch (e) { status(e.message, true); }
  }
  return card;
}

async function datasets() {
  const list = (await get('/v1/datasets')).datasets;
  if (!list.length) return h('p', {}, 'You have registered no dataset yet (veil dataset add, or POST /v1/datasets).');
  return h('div', {}, list.map((d) => h('section', { class: 'card' },
    h('h3', {}, d.name),
    table(null, ['rows', 'privacy unit', 'registered', 'content commitment'], [[num(d.rows, 0), d.privacy_unit ?? '\u2014', d.created_at, h('code', {}, d.content_commitment)]], [0]),
    table('Columns', ['name', 'type'], d.columns.map((c) => [c.name, c.type])),
    h('button', { type: 'button', onclick: async () => {
      try { download(`${d.name.replace(':', '_')}-certificate.json`, JSON.stringify(await get(`/v1/datasets/${enc(d.name)}/certificate`), null, 2), 'application/json'); }
      catch (e) { status(e.message, true); }
    } }, 'Download the signed registration certificate'))));
}

async function policy() {
  const list = (await get('/v1/datasets')).datasets;
  if (!list.length) return h('p', {}, 'No dataset yet.');
  const pick = h('select', {}, list.map((d) => h('option', { value: d.name }, d.name)));
  const area = h('div');
  pick.addEventListener('change', () => loadPolicy(pick.value, area));
  await loadPolicy(list[0].name, area);
  return h('div', {}, field('Dataset', pick), area);
}

async function loadPolicy(dataset, area) {
  const versions = (await get(`/v1/datasets/${enc(dataset)}/policy/versions`)).versions;
  const current = versions[versions.length - 1];
  const editor = h('textarea', { rows: 18, spellcheck: 'false', 'aria-describedby': 'policy-error' }, current ? current.toml : '');
  const error = h('div', { id: 'policy-error', class: 'field-error', role: 'alert' });
  const save = h('button', { type: 'button', class: 'primary' }, 'Save as a new version');
  save.addEventListener('click', async () => {
    try {
      const set = await api('PUT', `/v1/datasets/${enc(dataset)}/policy`, { toml: editor.value });
      editor.removeAttribute('aria-invalid');
      error.textContent = '';
      status(`Policy version ${set.version} set.${set.warnings ? ' Check: ' + set.warnings.join('; ') : ''}`);
      await loadPolicy(dataset, area);
    } catch (e) {
      editor.setAttribute('aria-invalid', 'true');
      error.textContent = e instanceof ApiError ? e.detail : e.message;
      editor.focus();
    }
  });
  const history = versions.slice().reverse().map((v, i, all) => {
    const older = all[i + 1];
    const diff = older ? lineDiff(older.toml, v.toml) : null;
    return h('details', { class: 'card' },
      h('summary', {}, `Version ${v.version} \u2014 ${v.created_at} by ${v.holder}`),
      diff ? h('pre', { class: 'diff', 'aria-label': `Changes from version ${older.version}` },
        diff.map((d) => h('span', { class: d.op === '+' ? 'add' : d.op === '-' ? 'del' : '' }, `${d.op} ${d.line}\n`)))
        : h('pre', {}, v.toml));
  });
  show(area, current ? h('p', { class: 'muted' }, `Current: version ${current.version}, hash ${current.hash.slice(0, 16)}\u2026`) : h('p', {}, 'No policy yet: consumers cannot use this dataset until you set one.'),
    field('Policy (TOML, docs/policy.md)', editor), error, save,
    h('h3', {}, 'Version history'), history.length ? history : h('p', {}, 'No version yet.'));
}

async function jobs() {
  const list = (await get('/v1/jobs')).jobs;
  const logs = h('div', { id: 'job-logs' });
  const rows = list.map((j) => [j.id, j.consumer, j.dataset, j.state, j.code ?? '', j.epsilon, j.created_at,
    h('button', { type: 'button', onclick: async () => {
      try { const l = await get(`/v1/jobs/${enc(j.id)}/logs`); show(logs, h('h3', {}, `Log of ${j.id}`), h('pre', {}, l.lines.join('\n') || '(empty)')); }
      catch (e) { status(e.message, true); }
    } }, `Log of ${j.id}`)]);
  return h('div', {}, table(null, ['job', 'consumer', 'dataset', 'state', 'code', '\u03b5', 'submitted', ''], rows, [5]), logs);
}

async function budgets() {
  const list = (await get('/v1/datasets')).datasets;
  const jobsList = (await get('/v1/jobs')).jobs;
  const out = [];
  for (const d of list) {
    const lines = await budgetsOf(d.name);
    out.push(h('h3', {}, d.name),
      table(null, ['consumer', '\u03b5 spent', '\u03b5 left', '\u03b5 total', '\u03b4 spent', '\u03b4 total'],
        lines.map((b) => [b.consumer, b.spent, b.remaining, b.total, b.delta_spent, b.delta_total]), [1, 2, 3, 4, 5]));
    // ε charged over time: the jobs that started (their start fixed `release_at`), per consumer.
    const started = jobsList.filter((j) => j.dataset === d.name && j.release_at && ['running', 'released', 'failed'].includes(j.state))
      .sort((a, b) => a.release_at.localeCompare(b.release_at));
    const series = {};
    for (const j of started) {
      const s = (series[j.consumer] ||= { name: j.consumer, points: [], total: 0 });
      s.total += Number(j.epsilon);
      s.points.push([j.release_at, s.total]);
    }
    out.push(timeChart(`\u03b5 charged on ${d.name} over time`, Object.values(series), '\u03b5'));
  }
  return h('div', {}, out);
}

export function holderSections() {
  return [
    { id: 'approvals', title: 'Approval queue', render: approvals },
    { id: 'datasets', title: 'Datasets', render: datasets },
    { id: 'policy', title: 'Policy', render: policy },
    { id: 'jobs', title: 'Jobs and logs', render: jobs },
    { id: 'budgets', title: 'Budgets', render: budgets },
  ];
}
