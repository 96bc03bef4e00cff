// The admin page: sign-in, navigation, and a hash router over the pages.
import { api, session, setOnUnauthorized } from './api.js';
import { h, mount, toast } from './dom.js';
import { field, showErrors } from './widgets.js';
import { listPage, formPage, viewPage } from './apps.js';
import { devicesPage, groupsPage, groupFormPage } from './resources.js';

const main = document.getElementById('main');
const top = document.getElementById('top');

/** `[pattern, page, title]`: the first match renders. */
const ROUTES = [
  [/^#\/applications\/new$/, formPage, 'Create External Application', 'applications'],
  [/^#\/applications\/([^/]+)\/edit$/, formPage, 'Edit External Application', 'applications'],
  [/^#\/applications\/([^/]+)$/, viewPage, 'External Application', 'applications'],
  [/^#\/applications$/, listPage, 'External Applications', 'applications'],
  [/^#\/devices$/, devicesPage, 'Devices', 'devices'],
  [/^#\/groups\/new$/, groupFormPage, 'Create Device Group', 'groups'],
  [/^#\/groups\/([^/]+)$/, groupFormPage, 'Edit Device Group', 'groups'],
  [/^#\/groups$/, groupsPage, 'Device Groups', 'groups'],
];

let rendering = Promise.resolve();
/** What the current page needs done when it is left (e.g. close a stream). */
let leave = null;

/** Navigates to `hash` and resolves once the page is rendered. */
export function go(hash) {
  if (location.hash === hash) return render();
  history.pushState(null, '', hash);
  return render();
}

function render() {
  rendering = rendering.then(renderNow, renderNow);
  return rendering;
}

async function renderNow() {
  leavePage();
  if (!session.key) return signIn();
  top.hidden = false;
  let hash = location.hash;
  let route = ROUTES.find(([re]) => re.test(hash));
  if (!route) {
    hash = '#/applications';
    history.replaceState(null, '', hash);
    route = ROUTES.find(([re]) => re.test(hash));
  }
  const [re, pageFn, title, section] = route;
  const arg = hash.match(re)[1];
  for (const a of top.querySelectorAll('nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${title} · SenseGate`;
  main.setAttribute('aria-busy', 'true');
  try {
    leave = await pageFn(main, go, arg && decodeURIComponent(arg));
  } catch (e) {
    // A refused key has already brought up the sign-in page.
    if (!session.key) return;
    mount(main, h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title)),
      h('p', { class: 'banner error', role: 'alert' }, e.message),
      h('a', { class: 'btn', href: '#/applications' }, 'Back to External Applications'));
  } finally {
    main.removeAttribute('aria-busy');
  }
  main.querySelector('h1')?.focus();
}

/** Runs the current page's clean-up (closes a live preview) and open dialogs. */
function leavePage() {
  document.querySelectorAll('dialog[open]').forEach((d) => d.remove());
  if (typeof leave === 'function') leave();
  leave = null;
}

function signIn(message) {
  leavePage();
  top.hidden = true;
  document.title = 'Sign in · SenseGate';
  const key = h('input', { type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const button = h('button', { type: 'submit', class: 'btn primary wide' }, 'Sign in');
  const form = h('form', { class: 'form card signin', novalidate: true, 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title', tabindex: '-1' }, 'SenseGate admin'),
    h('p', { class: 'muted' }, 'Sign in with an admin API key. It is kept for this browser tab only and forgotten when the tab closes or you sign out.'),
    field('key', 'Admin API key', key),
    button);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const value = key.value.trim();
    if (!showErrors(form, value ? {} : { key: 'Enter your admin API key.' })) return;
    button.disabled = true;
    try {
      await api('GET', '/applications?limit=1', undefined, value);
      session.key = value;
      await render();
    } catch (err) {
      button.disabled = false;
      showErrors(form, { key: err.status === 401 ? 'This key is not valid (or was revoked).' : err.message });
    }
  });
  mount(main, form);
  if (message) showErrors(form, { key: message });
  key.focus();
}

setOnUnauthorized(() => {
  session.key = null;
  signIn('Your admin key is no longer accepted. Sign in again.');
});

document.getElementById('signout').addEventListener('click', () => {
  session.key = null;
  toast('Signed out.');
  history.replaceState(null, '', location.pathname);
  signIn();
});

// Links are plain `#/…` hrefs, and Back/Forward change the hash: both
// fire hashchange.
window.addEventListener('hashchange', render);
render();
