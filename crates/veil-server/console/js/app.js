// Sign-in and navigation. The role the server reports for the token decides which sections are
// offered; what each section may show is decided by the server, through the same API.
import { ApiError, get, signIn, signOut } from './api.js';
import { field, h, show, status } from './dom.js';
import { holderSections } from './holder.js';
import { consumerSections } from './consumer.js';
import { reviewerSections } from './reviewer.js';

const SECTIONS = { holder: holderSections, consumer: consumerSections, reviewer: reviewerSections, admin: reviewerSections };

function signInForm() {
  const token = h('input', { type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'token-help', spellcheck: 'false' });
  const error = h('p', { class: 'field-error', id: 'token-error', role: 'alert' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'signin-title' },
    h('h2', { id: 'signin-title' }, 'Sign in'),
    field('Access token', token),
    h('p', { id: 'token-help', class: 'muted' }, 'The token your operator issued (veil admin add-principal). It stays in this tab\u2019s memory only: reloading the page signs you out.'),
    error,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    signIn(token.value);
    try {
      const who = await get('/v1/whoami');
      token.value = '';
      start(who);
    } catch (e) {
      signOut();
      token.setAttribute('aria-invalid', 'true');
      error.textContent = e instanceof ApiError && e.code === 'unauthenticated'
        ? 'This token is not valid (unknown, mistyped or revoked). Paste it again, or ask your operator for a new one.'
        : `Cannot sign in: ${e.message}`;
    }
  });
  show(document.getElementById('tabs'));
  show(document.getElementById('who'));
  show(document.getElementById('main'), form);
  token.focus();
}

function start(who) {
  const sections = SECTIONS[who.role]();
  const signOutButton = h('button', { type: 'button', onclick: () => { signOut(); status('Signed out.'); signInForm(); } }, 'Sign out');
  show(document.getElementById('who'), `Signed in as ${who.name} (${who.role})`, signOutButton);
  const tabs = document.getElementById('tabs');
  const buttons = sections.map((s) => h('button', { type: 'button', 'data-section': s.id, onclick: () => open(s) }, s.title));
  show(tabs, buttons);
  async function open(section) {
    for (const b of buttons) {
      if (b.dataset.section === section.id) b.setAttribute('aria-current', 'page');
      else b.removeAttribute('aria-current');
    }
    const main = document.getElementById('main');
    main.dataset.section = section.id;
    show(main, h('h2', {}, section.title), h('p', { class: 'muted' }, 'Loading\u2026'));
    try {
      const content = await section.render();
      if (main.dataset.section === section.id) show(main, h('h2', {}, section.title), content);
      status('');
    } catch (e) {
      show(main, h('h2', {}, section.title), h('p', { class: 'field-error', role: 'alert' }, e.message));
    }
  }
  open(sections[0]);
}

signInForm();
