// Devices and device groups: simple pages so the whole flow works from the browser.
import { api, all, enc } from './api.js';
import { h, mount, localDateTime, toast, modal, confirmDialog } from './dom.js';
import { field, showErrors, multiSelect, rowMenu, pagedTable } from './widgets.js';
import { apiErrorToForm, ingestKeyDialog } from './apps.js';

async function removeRow(tr, what, name, path, refresh, body) {
  const ok = await confirmDialog({ title: `Delete ${name}?`, body, action: 'Delete', danger: true });
  if (!ok) return;
  try {
    await api('DELETE', path);
    tr.remove();
    refresh();
    toast(`${what} ${name} deleted.`);
  } catch (e) { toast(e.message, 'error'); }
}

// --- devices ---

export async function devicesPage(main) {
  const table = pagedTable({
    path: '/devices', label: 'Devices', columns: ['Device ID', 'Name', 'Status', 'Created At'],
    emptyText: 'No devices yet.',
    row(d, refresh) {
      const status = h('td');
      const paint = () => mount(status, h('span', { class: `badge ${d.enabled ? 'enabled' : 'disabled'}` }, d.enabled ? 'Enabled' : 'Disabled'));
      paint();
      const nameCell = h('td', {}, d.name);
      const tr = h('tr', { 'data-id': d.id },
        h('td', {}, h('code', {}, d.id)), nameCell, status,
        h('td', {}, localDateTime(d.createdAt)),
        h('td', { class: 'row-actions' }, rowMenu(`Actions for ${d.name}`, () => [
          {
            label: 'Rename',
            run: async () => {
              const saved = await renameDialog(d);
              if (saved) { Object.assign(d, saved); nameCell.textContent = d.name; toast(`Device ${d.id} renamed.`); }
            },
          },
          {
            label: d.enabled ? 'Disable' : 'Enable',
            run: async () => {
              try {
                Object.assign(d, await api('POST', `/devices/${enc(d.id)}/${d.enabled ? 'disable' : 'enable'}`));
                paint();
              } catch (e) { toast(e.message, 'error'); }
            },
          },
          {
            label: 'Rotate Ingest Key',
            run: async () => {
              const ok = await confirmDialog({
                title: `Rotate the ingest key of ${d.name}?`,
                body: 'The device must be reconfigured with the new key; the current key stops working.',
                action: 'Rotate Key', danger: true,
              });
              if (!ok) return;
              try { await ingestKeyDialog(await api('POST', `/devices/${enc(d.id)}/rotate-key`)); } catch (e) { toast(e.message, 'error'); }
            },
          },
          {
            label: 'Delete', danger: true,
            run: () => removeRow(tr, 'Device', d.name, `/devices/${enc(d.id)}`, refresh,
              'The device is removed from every group and application and can no longer publish.'),
          },
        ])));
      return tr;
    },
  });

  const id = h('input', { type: 'text', required: true, maxlength: '64', autocomplete: 'off', pattern: '[A-Za-z0-9._\\-]+' });
  const name = h('input', { type: 'text', required: true, maxlength: '100', autocomplete: 'off' });
  const banner = h('p', { class: 'banner error', role: 'alert', hidden: true });
  const form = h('form', { class: 'form card inline-form', novalidate: true, 'aria-label': 'Create device' },
    banner,
    h('div', { class: 'row' },
      field('id', 'Device ID', id, 'Letters, digits, . _ -'),
      field('name', 'Name', name),
      h('div', { class: 'field' }, h('button', { type: 'submit', class: 'btn primary' }, 'Create Device'))));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    banner.hidden = true;
    const errors = {};
    if (!id.value.trim()) errors.id = 'Enter a device id.';
    if (!name.value.trim()) errors.name = 'Enter a name.';
    if (!showErrors(form, errors)) return;
    try {
      const device = await api('POST', '/devices', { id: id.value.trim(), name: name.value });
      form.reset();
      await table.load();
      await ingestKeyDialog(device);
      id.focus();
    } catch (err) { apiErrorToForm(form, banner, err, 'id'); }
  });

  await table.load();
  mount(main, h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Devices')), form, table.el);
}

/** Asks for a device's new name; resolves with the saved device, or undefined. */
function renameDialog(device) {
  return modal((close) => {
    const name = h('input', { type: 'text', required: true, maxlength: '100', autocomplete: 'off', value: device.name });
    const banner = h('p', { class: 'banner error', role: 'alert', hidden: true });
    const form = h('form', { novalidate: true },
      h('h2', {}, `Rename ${device.id}`), banner, field('name', 'Name', name),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'btn', onclick: () => close() }, 'Cancel'),
        h('button', { type: 'submit', class: 'btn primary' }, 'Save')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (!showErrors(form, name.value.trim() ? {} : { name: 'Enter a name.' })) return;
      try {
        close(await api('PATCH', `/devices/${enc(device.id)}`, { name: name.value }));
      } catch (err) { apiErrorToForm(form, banner, err, 'name'); }
    });
    return form;
  }, { label: `Rename ${device.id}` });
}

// --- device groups ---

export async function groupsPage(main, go) {
  const table = pagedTable({
    path: '/device-groups', label: 'Device groups', columns: ['Name', 'Devices', 'Created At'],
    emptyText: 'No device groups yet.',
    row(g, refresh) {
      const tr = h('tr', { 'data-id': g.id },
        h('td', {}, h('a', { href: `#/groups/${enc(g.id)}` }, g.name)),
        h('td', {}, String(g.devices.length)),
        h('td', {}, localDateTime(g.createdAt)),
        h('td', { class: 'row-actions' }, rowMenu(`Actions for ${g.name}`, () => [
          { label: 'Edit', run: () => go(`#/groups/${enc(g.id)}`) },
          {
            label: 'Delete', danger: true,
            run: () => removeRow(tr, 'Group', g.name, `/device-groups/${enc(g.id)}`, refresh,
              'Applications that name this group lose access to its devices (unless they name them directly).'),
          },
        ])));
      return tr;
    },
  });
  await table.load();
  mount(main,
    h('div', { class: 'page-head' },
      h('h1', { tabindex: '-1' }, 'Device Groups'),
      h('a', { class: 'btn primary', href: '#/groups/new' }, 'Create Device Group')),
    table.el);
}

export async function groupFormPage(main, go, id) {
  const [group, devices] = await Promise.all([id ? api('GET', `/device-groups/${enc(id)}`) : null, all('/devices')]);
  const name = h('input', { type: 'text', required: true, maxlength: '100', autocomplete: 'off', value: group?.name ?? '' });
  const pick = multiSelect({ name: 'devices', label: 'Devices', noun: 'devices', items: devices, selected: group?.devices });
  const banner = h('p', { class: 'banner error', role: 'alert', hidden: true });
  const save = h('button', { type: 'submit', class: 'btn primary' }, id ? 'Update' : 'Save');
  const form = h('form', { class: 'form card', novalidate: true },
    banner,
    field('name', 'Group Name', name),
    field('devices', 'Devices', pick.el),
    h('div', { class: 'actions' }, h('a', { class: 'btn', href: '#/groups' }, 'Cancel'), save));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    banner.hidden = true;
    if (!showErrors(form, name.value.trim() ? {} : { name: 'Enter a name.' })) return;
    save.disabled = true;
    try {
      const body = { name: name.value, devices: pick.value() };
      await api(id ? 'PATCH' : 'POST', id ? `/device-groups/${enc(id)}` : '/device-groups', body);
      toast(`Group ${body.name} saved.`);
      await go('#/groups');
    } catch (err) {
      save.disabled = false;
      apiErrorToForm(form, banner, err, 'name');
    }
  });
  mount(main,
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, id ? `Edit ${group.name}` : 'Create Device Group')),
    form);
}
