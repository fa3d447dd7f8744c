// Building the page without HTML strings: every value from the API is set as text, never parsed.

/** Creates an element. `props`: attributes, `class`, `on<event>` listeners; children: nodes or text. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/** An SVG element (charts). */
export function svg(tag, props = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

let nextId = 0;
/** A labelled control: returns [label, control] with the label bound to the control's id. */
export function field(text, control) {
  if (!control.id) control.id = `f${++nextId}`;
  return [h('label', { for: control.id }, text), control];
}

/** A table from column headers and rows of cells (text or nodes). */
export function table(caption, headers, rows, numeric = []) {
  return h('table', {},
    caption ? h('caption', { class: 'muted' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c, i) => h('td', numeric.includes(i) ? { class: 'num' } : {}, c))))));
}

/** Replaces a container's content. */
export function show(container, ...children) {
  container.replaceChildren();
  append(container, children);
}

/** A status line at the foot of the page (announced to screen readers). */
export function status(text, error = false) {
  const el = document.getElementById('status');
  el.textContent = text;
  el.className = error ? 'error' : '';
}

/** Offers `text` as a file download. */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A number for people: up to `digits` significant decimals. */
export function num(x, digits = 3) {
  if (x === null || x === undefined) return '—';
  return Number(x).toLocaleString('en-US', { maximumFractionDigits: digits });
}
