// The reviewer's sections: the checkpoint verified here in the browser (not on the server's
// word), the audit log explorer, ε spent over time, refusals and anomalies.
import { get, withQuery } from './api.js';
import { field, h, num, show, table } from './dom.js';
import { consistent, hex, parseKey, verifyCheckpoint } from './verify.js';
import { timeChart } from './chart.js';

// The last checkpoint this tab verified: the next one must extend it.
let held = null;

function verdict(ok, text) {
  return h('p', { class: `verdict ${ok ? 'ok' : 'bad'}`, id: 'verdict' }, `${ok ? '\u2714' : '\u2718'} ${text}`);
}

async function checkpoint() {
  const published = await get('/v1/public-key', { auth: false });
  const keyText = h('textarea', { rows: 2, spellcheck: 'false', 'aria-describedby': 'key-help' }, published.first_public_key === published.public_key ? published.public_key : published.public_key);
  const note = h('textarea', { rows: 7, spellcheck: 'false' }, await get('/v1/audit/checkpoint', { auth: false }));
  const out = h('div', { id: 'checkpoint-outcome', 'aria-live': 'polite' });
  async function verify() {
    try {
      const key = await parseKey(keyText.value);
      const cp = await verifyCheckpoint(note.value, key);
      const parts = [verdict(true, `Checkpoint verified in this browser: ${cp.size} entries, root ${hex(cp.root).slice(0, 16)}\u2026, signed by ${key.name} (${key.fingerprint}).`)];
      if (held && held.size <= cp.size) {
        const proof = await get(withQuery('/v1/audit/proof/consistency', { from: held.size, size: cp.size }));
        const ok = await consistent(held.size, cp.size, proof.path, held.root, cp.root);
        parts.push(verdict(ok, ok ? `The log of ${cp.size} entries extends the one of ${held.size} this tab verified before.`
          : `The log of ${cp.size} entries does NOT extend the one of ${held.size} verified before: a rewritten or forked history.`));
        if (!ok) { show(out, parts); return; }
      }
      held = cp;
      show(out, parts);
    } catch (e) {
      show(out, verdict(false, `Checkpoint rejected: ${e.message}.`));
    }
  }
  const refresh = h('button', { type: 'button', onclick: async () => { note.value = await get('/v1/audit/checkpoint', { auth: false }); await verify(); } }, 'Fetch a fresh checkpoint and verify it');
  const button = h('button', { type: 'button', class: 'primary', id: 'verify-checkpoint', onclick: verify }, 'Verify this checkpoint');
  return h('div', {},
    field('Trusted public key of the domain', keyText),
    h('p', { id: 'key-help', class: 'muted' }, `Fetched from /v1/public-key (fingerprint ${published.fingerprint}). Compare it with the fingerprint the operator published, or paste the key you hold: the check below then does not take the server\u2019s word.`),
    field('Signed checkpoint (C2SP signed note)', note),
    h('div', { class: 'row' }, button, refresh), out);
}

const KINDS = ['', 'dataset_registered', 'policy_set', 'job_submitted', 'job_checked', 'job_approved', 'job_rejected', 'job_refused', 'job_started', 'job_charged', 'job_finished', 'release_created', 'release_denied', 'link_proposed', 'link_decided', 'link_revoked', 'link_evaluated', 'key_rotated'];

async function log() {
  const inputs = {
    consumer: h('input', { type: 'text' }), dataset: h('input', { type: 'text' }),
    decision: h('select', {}, ['', 'approved', 'rejected', 'refused', 'released', 'denied'].map((d) => h('option', { value: d }, d || 'any'))),
    since: h('input', { type: 'text', placeholder: '2026-12-01' }), until: h('input', { type: 'text', placeholder: '2026-12-31' }),
  };
  const kind = h('select', {}, KINDS.map((k) => h('option', { value: k }, k || 'any')));
  const results = h('div', { id: 'log-results' });
  const detail = h('div', { id: 'entry-detail' });
  async function search(ev) {
    if (ev) ev.preventDefault();
    const query = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value.trim()]));
    let entries = (await get(withQuery('/v1/audit/log', query))).entries;
    if (kind.value) entries = entries.filter((e) => e.event.kind === kind.value);
    const rows = entries.map((e) => [e.index, e.time, e.event.kind, e.event.job ?? '', e.event.consumer ?? '', e.event.dataset ?? '',
      h('button', { type: 'button', onclick: () => show(detail, h('h3', {}, `Entry ${e.index}`),
        h('p', { class: 'muted' }, `Chain position: entry ${e.index}; previous leaf ${e.prev}.`), h('pre', {}, JSON.stringify(e, null, 2))) }, `Entry ${e.index}`)]);
    show(results, table(`${entries.length} entries`, ['#', 'time', 'event', 'job', 'consumer', 'dataset', ''], rows, [0]));
  }
  const form = h('form', { class: 'row' },
    Object.entries(inputs).map(([k, el]) => h('div', {}, field(k, el))), h('div', {}, field('event', kind)),
    h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  form.addEventListener('submit', search);
  await search();
  return h('div', {}, form, results, detail);
}

async function spending() {
  const summary = await get('/v1/audit/summary');
  const series = summary.spending.map((s) => ({ name: `${s.consumer} on ${s.dataset}`, points: s.over_time.map(([t, v]) => [t, v / 1e6]) }));
  return h('div', {},
    timeChart('\u03b5 spent over time, per consumer and dataset', series, '\u03b5'),
    table(null, ['consumer', 'dataset', 'jobs started', '\u03b5 spent', '\u03b5 total'],
      summary.spending.map((s) => [s.consumer, s.dataset, s.jobs_started, num(s.spent_micro / 1e6, 6), num(s.total_micro / 1e6, 6)]), [2, 3, 4]));
}

async function refusals() {
  const summary = await get('/v1/audit/summary');
  return h('div', {},
    table(`Jobs by outcome (${summary.entries} log entries)`, ['outcome', 'jobs'], Object.entries(summary.jobs_by_outcome), [1]),
    table('Refusals by code and reason', ['refusal', 'count'], Object.entries(summary.refusals), [1]),
    h('h3', {}, 'Anomalies'),
    summary.anomalies.length ? h('ul', {}, summary.anomalies.map((a) => h('li', {}, a))) : h('p', {}, 'None found.'));
}

export function reviewerSections() {
  return [
    { id: 'checkpoint', title: 'Checkpoint', render: checkpoint },
    { id: 'log', title: 'Audit log', render: log },
    { id: 'spending', title: 'Spending', render: spending },
    { id: 'refusals', title: 'Refusals and anomalies', render: refusals },
  ];
}
