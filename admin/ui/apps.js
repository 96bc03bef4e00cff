// External applications: list, create, view, edit, and the credentials dialog.
import { api, all, enc, ApiError } from './api.js';
import { h, mount, localDateTime, localDate, isoDay, toast, modal, confirmDialog } from './dom.js';
import { field, showErrors, multiSelect, rowMenu, icon, pagedTable } from './widgets.js';
import { livePreview } from './preview.js';

const NEAR_DAYS = 14;
const DAY = 86400e3;

/** The expiry badge: shown only when the expiry is near or past. */
function expiryBadge(app) {
  const left = new Date(app.expiresAt) - Date.now();
  if (app.expired || left <= 0) {
    return h('span', { class: 'badge expired', title: localDateTime(app.expiresAt) }, `Expired ${localDate(app.expiresAt)}`);
  }
  if (left < NEAR_DAYS * DAY) {
    const days = Math.ceil(left / DAY);
    return h('span', { class: 'badge expiring', title: localDateTime(app.expiresAt) },
      `Expires in ${days} day${days === 1 ? '' : 's'}`);
  }
  return null;
}

const statusBadge = (status) =>
  h('span', { class: `badge ${status}` }, status === 'enabled' ? 'Enabled' : 'Disabled');

// --- list ---

export async function listPage(main, go) {
  const table = pagedTable({
    path: '/applications', label: 'External applications',
    columns: ['External Application Name', 'Created At', 'Status'],
    emptyText: 'No external applications yet. Create one to hand a Client ID and Client Secret to an integration.',
    row: (app, refresh) => appRow(app, refresh, go),
  });
  await table.load();
  mount(main,
    h('div', { class: 'page-head' },
      h('h1', { tabindex: '-1' }, 'External Applications'),
      h('a', { class: 'btn primary', href: '#/applications/new' }, 'Create New External Application')),
    table.el);
}

/** One row of the list, with its ⋮ menu. */
function appRow(app, refresh, go) {
  const status = h('td', { class: 'status' });
  const paint = () => mount(status, statusBadge(app.status), expiryBadge(app));
  paint();
  const tr = h('tr', { 'data-id': app.id },
    h('td', {}, h('a', { href: `#/applications/${enc(app.id)}` }, app.name)),
    h('td', {}, h('time', { datetime: app.createdAt }, localDateTime(app.createdAt))),
    status,
    h('td', { class: 'row-actions' }, rowMenu(`Actions for ${app.name}`, () => [
      { label: 'View', run: () => go(`#/applications/${enc(app.id)}`) },
      { label: 'Edit', run: () => go(`#/applications/${enc(app.id)}/edit`) },
      {
        label: 'Delete', danger: true,
        run: async () => {
          const ok = await confirmDialog({
            title: `Delete ${app.name}?`,
            body: 'The application and its credentials are deleted, its access tokens stop working and its open streams close. This cannot be undone.',
            action: 'Delete', danger: true,
          });
          if (!ok) return;
          try {
            await api('DELETE', `/applications/${enc(app.id)}`);
            tr.remove();
            refresh();
            toast(`${app.name} deleted.`);
          } catch (e) { toast(e.message, 'error'); }
        },
      },
      { label: 'Rotate Secret', run: () => rotate(app) },
      {
        label: app.status === 'enabled' ? 'Disable' : 'Enable',
        run: async () => {
          const verb = app.status === 'enabled' ? 'disable' : 'enable';
          try {
            Object.assign(app, await api('POST', `/applications/${enc(app.id)}/${verb}`));
            paint();
            toast(`${app.name} ${verb}d.`);
          } catch (e) { toast(e.message, 'error'); }
        },
      },
    ])));
  return tr;
}

async function rotate(app) {
  const ok = await confirmDialog({
    title: `Rotate the secret of ${app.name}?`,
    body: 'A new Client Secret is issued. The current one stops working at once, and so do access tokens issued with it; open streams close. The Client ID stays the same.',
    action: 'Rotate Secret', danger: true,
  });
  if (!ok) return;
  try {
    await credentialsDialog(await api('POST', `/applications/${enc(app.id)}/rotate-secret`), 'New Client Secret');
  } catch (e) { toast(e.message, 'error'); }
}

// --- credentials dialog ---

/** A hidden value with an eye button to reveal it and a copy button. */
function secretField(label, value) {
  const input = h('input', {
    type: 'password', readonly: true, value, class: 'secret', autocomplete: 'off', spellcheck: 'false',
  });
  const eye = h('button', {
    type: 'button', class: 'btn icon-btn', 'aria-label': `Show ${label}`, 'aria-pressed': 'false', title: 'Show',
  }, icon('eye'));
  eye.addEventListener('click', () => {
    const show = input.type === 'password';
    input.type = show ? 'text' : 'password';
    eye.setAttribute('aria-pressed', String(show));
    eye.setAttribute('aria-label', `${show ? 'Hide' : 'Show'} ${label}`);
    eye.title = show ? 'Hide' : 'Show';
    eye.replaceChildren(icon(show ? 'eyeOff' : 'eye'));
  });
  const note = h('span', { class: 'copied', 'aria-live': 'polite' });
  const copy = h('button', { type: 'button', class: 'btn', 'aria-label': `Copy ${label}` }, icon('copy'), 'Copy');
  copy.addEventListener('click', async () => {
    note.textContent = (await copyText(input)) ? 'Copied' : 'Copy failed: select the text and copy it';
    setTimeout(() => { note.textContent = ''; }, 3000);
  });
  return { el: field(label.toLowerCase().replace(/\W/g, '-'), label, input, null), row: [eye, copy, note], input };
}

async function copyText(input) {
  try {
    await navigator.clipboard.writeText(input.value);
    return true;
  } catch {
    // No Clipboard API (plain HTTP on another host): the legacy way.
    const type = input.type;
    input.type = 'text';
    input.select();
    const ok = document.execCommand('copy');
    input.type = type;
    input.setSelectionRange(0, 0);
    return ok;
  }
}

/**
 * Shows `clientId` and `clientSecret` of `app` once. Done wipes them from
 * the page, and nothing else keeps them.
 */
export function credentialsDialog(app, title = 'Client credentials') {
  const fields = [
    ['Client ID', app.clientId],
    ['Client Secret', app.clientSecret],
  ].filter(([, v]) => v).map(([label, v]) => secretField(label, v));
  delete app.clientSecret;
  return secretsDialog(`${title}: ${app.name}`, fields,
    'Copy the Client Secret now and store it safely: it will not be shown again. If it is lost, rotate the secret.');
}

/** Shown once: a device's ingest key. */
export function ingestKeyDialog(device) {
  const fields = [secretField('Ingest Key', device.ingestKey)];
  delete device.ingestKey;
  return secretsDialog(`Ingest key: ${device.name}`, fields,
    'Copy the ingest key now and configure the device with it: it will not be shown again.');
}

function secretsDialog(title, fields, warning) {
  return modal((close) => {
    const done = () => {
      for (const f of fields) f.input.value = '';
      fields.length = 0;
      close();
    };
    return [
      h('h2', {}, title),
      h('p', { class: 'warning', role: 'note' }, h('strong', {}, 'Shown only once. '), warning),
      ...fields.map((f) => h('div', { class: 'secret-field' }, f.el, h('div', { class: 'secret-tools' }, f.row))),
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'btn primary', onclick: done }, 'Done')),
    ];
  }, { dismissable: false, label: title });
}

// --- create / edit ---

/** Devices and groups as `{id, name}` for the pickers. */
const choices = () => Promise.all([all('/devices'), all('/device-groups')]);

export async function formPage(main, go, id) {
  const editing = Boolean(id);
  const [app, [devices, groups]] = await Promise.all([
    editing ? api('GET', `/applications/${enc(id)}`) : null,
    choices(),
  ]);
  const name = h('input', { type: 'text', required: true, maxlength: '100', autocomplete: 'off', value: app?.name ?? '' });
  const today = isoDay(new Date());
  const expires = h('input', { type: 'date', required: true, min: today });
  const anomalies = h('input', { type: 'checkbox', role: 'switch', checked: app?.includeAnomalies ?? false, class: 'switch' });
  const devicePick = multiSelect({ name: 'devices', label: 'Devices', noun: 'devices', items: devices, selected: app?.devices });
  const groupPick = multiSelect({ name: 'deviceGroups', label: 'Device Groups', noun: 'device groups', items: groups, selected: app?.deviceGroups, showIds: false });
  const banner = h('p', { class: 'banner error', role: 'alert', hidden: true });
  const save = h('button', { type: 'submit', class: 'btn primary' }, editing ? 'Update' : 'Save');
  const back = editing ? `#/applications/${enc(id)}` : '#/applications';

  const form = h('form', { class: 'form card', novalidate: true },
    banner,
    field('name', 'Application Name', name),
    editing
      ? h('div', { class: 'field' }, h('span', { class: 'label' }, 'Expiration Date'),
        h('p', { class: 'static' }, localDateTime(app.expiresAt), ' ', h('span', { class: 'hint' }, '(set at creation)')))
      : field('expiresAt', 'Expiration Date', expires, 'The application stops working at the end of this day (local time).'),
    h('div', { class: 'field switch-field', 'data-field': 'includeAnomalies' },
      h('label', {}, anomalies, h('span', {}, 'Include Anomalies')),
      h('p', { class: 'hint' }, 'Also deliver anomaly events, not only telemetry.'),
      h('p', { class: 'field-error', 'data-error-for': 'includeAnomalies', hidden: true })),
    field('devices', 'Devices', devicePick.el),
    field('deviceGroups', 'Device Groups', groupPick.el),
    h('div', { class: 'actions' },
      h('a', { class: 'btn', href: back }, 'Cancel'),
      save));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    banner.hidden = true;
    const body = {
      name: name.value,
      includeAnomalies: anomalies.checked,
      devices: devicePick.value(),
      deviceGroups: groupPick.value(),
    };
    const errors = {};
    if (!name.value.trim()) errors.name = 'Enter a name.';
    if (!editing) {
      if (!expires.value) errors.expiresAt = 'Choose an expiration date.';
      else if (expires.value < isoDay(new Date())) errors.expiresAt = 'The expiration date cannot be in the past.';
      else {
        const [y, m, d] = expires.value.split('-').map(Number);
        body.expiresAt = new Date(y, m - 1, d, 23, 59, 59).toISOString();
      }
    }
    if (!showErrors(form, errors)) return;
    save.disabled = true;
    try {
      const saved = await api(editing ? 'PATCH' : 'POST', editing ? `/applications/${enc(id)}` : '/applications', body);
      if (editing) {
        toast(`${saved.name} updated.`);
        await go(`#/applications/${enc(id)}`);
      } else {
        await go('#/applications');
        await credentialsDialog(saved, 'Application created');
      }
    } catch (err) {
      save.disabled = false;
      apiErrorToForm(form, banner, err, 'name');
    }
  });

  mount(main,
    h('div', { class: 'page-head' },
      h('h1', { tabindex: '-1' }, editing ? `Edit ${app.name}` : 'Create New External Application')),
    form);
}

/**
 * Puts an API error next to its field (`err.field`; a 409 conflict belongs
 * to `conflictField`), or in the banner.
 */
export function apiErrorToForm(form, banner, err, conflictField) {
  const target = err instanceof ApiError && err.status === 409 ? conflictField : err.field;
  if (target && form.querySelector(`[data-error-for="${target}"]`)) {
    showErrors(form, { [target]: err.message });
  } else {
    banner.textContent = err.message[0].toUpperCase() + err.message.slice(1);
    banner.hidden = false;
  }
}

// --- view ---

export async function viewPage(main, go, id) {
  const [app, [devices, groups]] = await Promise.all([api('GET', `/applications/${enc(id)}`), choices()]);
  const names = (list, ids, showIds = true) => {
    const byId = new Map(list.map((x) => [x.id, x.name]));
    return ids.length
      ? h('ul', { class: 'plain' }, ids.map((i) => h('li', {}, byId.get(i) ?? i, showIds && byId.get(i) && byId.get(i) !== i ? h('small', {}, ` ${i}`) : null)))
      : h('span', { class: 'muted' }, 'None');
  };
  const row = (label, value) => [h('dt', {}, label), h('dd', {}, value)];
  const preview = livePreview(app);
  mount(main,
    h('div', { class: 'page-head' },
      h('h1', { tabindex: '-1' }, app.name),
      h('div', { class: 'head-actions' },
        h('a', { class: 'btn', href: '#/applications' }, 'Back to list'),
        h('a', { class: 'btn primary', href: `#/applications/${enc(id)}/edit` }, 'Edit'))),
    h('div', { class: 'card' }, h('dl', { class: 'details' },
      row('Application Name', app.name),
      row('Status', [statusBadge(app.status), ' ', expiryBadge(app)]),
      row('Expiration Date', localDateTime(app.expiresAt)),
      row('Include Anomalies', app.includeAnomalies ? 'Yes' : 'No'),
      row('Devices', names(devices, app.devices)),
      row('Device Groups', names(groups, app.deviceGroups, false)),
      row('Client ID', h('code', {}, app.clientId)),
      row('Created At', localDateTime(app.createdAt)),
      row('Updated At', localDateTime(app.updatedAt)))),
    preview.el);
  return preview.stop;
}
