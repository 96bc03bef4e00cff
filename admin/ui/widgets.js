// Form fields with error slots, the searchable multi-select, the row menu,
// icons.
import { h, mount, toast } from './dom.js';
import { page } from './api.js';

let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

const ICONS = {
  eye: ['M1 12s4-8 11-8 11 8 11 8-4 8-11 8-11-8-11-8z', 'M12 9a3 3 0 1 0 0 6 3 3 0 1 0 0-6z'],
  eyeOff: ['M1 12s4-8 11-8 11 8 11 8-4 8-11 8-11-8-11-8z', 'M12 9a3 3 0 1 0 0 6 3 3 0 1 0 0-6z', 'M2 2l20 20'],
  copy: ['M9 9h11a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2H11a2 2 0 0 1-2-2z', 'M5 15H4a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2h9a2 2 0 0 1 2 2v1'],
  dots: ['M12 5h.01', 'M12 12h.01', 'M12 19h.01'],
};

/** An inline SVG icon (decorative: the button carries the label). */
export function icon(name) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', `icon icon-${name}`);
  for (const d of ICONS[name]) {
    const p = document.createElementNS(ns, 'path');
    p.setAttribute('d', d);
    svg.append(p);
  }
  return svg;
}

/**
 * A labelled field: `field('name', 'Application Name', input)`. The control
 * gets an id, and an error slot it is described by; `showErrors` fills it.
 */
export function field(name, label, control, hint) {
  const id = control.id || (control.id = nextId(name));
  const err = h('p', { class: 'field-error', id: `${id}-error`, 'data-error-for': name, hidden: true });
  const hintEl = hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null;
  control.setAttribute('aria-describedby', [hintEl?.id, err.id].filter(Boolean).join(' '));
  const isGroup = control.tagName === 'FIELDSET';
  return h('div', { class: 'field', 'data-field': name },
    isGroup ? null : h('label', { for: id }, label), control, hintEl, err);
}

/** Shows `{field: message}` next to the fields of `form`; returns false if any. */
export function showErrors(form, errors) {
  let first = null;
  for (const el of form.querySelectorAll('[data-error-for]')) {
    const raw = errors[el.dataset.errorFor];
    const msg = raw && raw[0].toUpperCase() + raw.slice(1);
    el.textContent = msg || '';
    el.hidden = !msg;
    const control = el.closest('.field').querySelector('input, fieldset');
    control?.toggleAttribute('aria-invalid', Boolean(msg));
    if (msg && !first) first = control;
  }
  first?.querySelector?.('input')?.focus() ?? first?.focus();
  return !first;
}

/**
 * Multi-select with search for long lists (thousands of devices): the
 * selection shows as removable chips; the list shows at most `LIMIT` rows
 * matching the search on name or id.
 */
export function multiSelect({ name, label, items, selected = [], noun, showIds = true }) {
  const LIMIT = 100;
  const CHIPS = 12;
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
  items = [...items].sort((a, b) => collator.compare(a.name, b.name));
  const byId = new Map(items.map((it) => [it.id, it]));
  const chosen = new Set(selected);
  const listId = nextId(`${name}-options`);
  const search = h('input', {
    type: 'search', class: 'picker-search', placeholder: `Search ${noun} by name or id`,
    'aria-label': `Search ${label}`, 'aria-controls': listId, autocomplete: 'off',
  });
  const chips = h('div', { class: 'chips', 'aria-label': `Selected ${label}` });
  const count = h('span', { class: 'picker-count', 'aria-live': 'polite' });
  const list = h('ul', { class: 'options', id: listId, 'aria-label': label });
  const more = h('p', { class: 'hint' });
  const clear = h('button', { type: 'button', class: 'btn link', onclick: () => { chosen.clear(); render(); } }, 'Clear');
  const onlyChosen = h('input', { type: 'checkbox', onchange: () => render() });
  const addAll = h('button', { type: 'button', class: 'btn link' });
  let matches = items;
  addAll.addEventListener('click', () => { for (const it of matches) chosen.add(it.id); render(); });
  const labelOf = (id) => byId.get(id)?.name ?? id;

  function toggle(id, on) {
    if (on) chosen.add(id); else chosen.delete(id);
    renderChips();
  }

  function renderChips() {
    const ids = [...chosen];
    mount(chips, ids.slice(0, CHIPS).map((id) => h('span', { class: 'chip' }, labelOf(id),
      h('button', {
        type: 'button', 'aria-label': `Remove ${labelOf(id)}`, title: 'Remove',
        onclick: () => { chosen.delete(id); render(); },
      }, '×'))),
    ids.length > CHIPS ? h('button', {
      type: 'button', class: 'chip more', title: 'List the selected ones',
      onclick: () => { onlyChosen.checked = true; render(); },
    }, `+${ids.length - CHIPS} more`) : null);
    count.textContent = `${ids.length} of ${items.length} selected`;
    clear.hidden = ids.length === 0;
  }

  function render() {
    const q = search.value.trim().toLowerCase();
    matches = items.filter((it) => (!q || it.name.toLowerCase().includes(q) || it.id.toLowerCase().includes(q))
      && (!onlyChosen.checked || chosen.has(it.id)));
    addAll.textContent = `Select all ${matches.length} matches`;
    addAll.hidden = !q || matches.length < 2 || matches.every((it) => chosen.has(it.id));
    mount(list, matches.slice(0, LIMIT).map((it, i) => {
      const box = h('input', { type: 'checkbox', value: it.id, checked: chosen.has(it.id), tabindex: i ? '-1' : '0',
        onchange: (e) => toggle(it.id, e.target.checked) });
      return h('li', {}, h('label', {}, box, h('span', {}, it.name),
        showIds && it.name !== it.id ? h('small', {}, it.id) : null));
    }));
    if (!items.length) mount(list, h('li', { class: 'empty' }, `No ${noun} yet.`));
    else if (!matches.length) mount(list, h('li', { class: 'empty' }, `No ${noun} match “${search.value}”.`));
    more.textContent = matches.length > LIMIT
      ? `Showing ${LIMIT} of ${matches.length} matches: refine the search to see the others.` : '';
    renderChips();
  }

  // The list is one Tab stop: arrows move within it, Space toggles.
  const boxes = () => [...list.querySelectorAll('input')];
  function focusBox(box) {
    for (const b of boxes()) b.tabIndex = -1;
    box.tabIndex = 0;
    box.focus();
  }
  list.addEventListener('keydown', (e) => {
    const all = boxes();
    const i = all.indexOf(document.activeElement);
    const to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 }[e.key];
    if (i < 0 || to === undefined) return;
    e.preventDefault();
    if (to < 0) search.focus();
    else focusBox(all[Math.min(to, all.length - 1)]);
  });
  search.addEventListener('input', render);
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') e.preventDefault();
    if (e.key === 'ArrowDown' && boxes().length) { e.preventDefault(); focusBox(boxes()[0]); }
  });
  const box = h('fieldset', { class: 'picker', 'data-name': name },
    h('legend', {}, label), chips, h('div', { class: 'picker-bar' }, search, count, clear),
    h('div', { class: 'picker-tools' }, h('label', {}, onlyChosen, 'Selected only'), addAll), list, more);
  render();
  return { el: box, value: () => [...chosen] };
}

let openMenu = null;
document.addEventListener('click', (e) => {
  if (openMenu && !openMenu.contains(e.target)) openMenu.close();
});

/**
 * The ⋮ menu of a row. `items()` is called when it opens, so labels such as
 * Disable/Enable follow the row's current state.
 */
export function rowMenu(label, items) {
  const button = h('button', {
    type: 'button', class: 'btn icon-btn kebab', 'aria-haspopup': 'menu', 'aria-expanded': 'false',
    'aria-label': label, title: 'Actions',
  }, icon('dots'));
  const menu = h('ul', { class: 'menu', role: 'menu', hidden: true, 'aria-label': label });
  const wrap = h('div', { class: 'menu-wrap' }, button, menu);
  const entries = () => [...menu.querySelectorAll('[role=menuitem]')];

  wrap.close = (focus = false) => {
    menu.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    if (openMenu === wrap) openMenu = null;
    if (focus) button.focus();
  };
  function open() {
    openMenu?.close();
    mount(menu, items().map((it) => h('li', { role: 'none' }, h('button', {
      type: 'button', role: 'menuitem', tabindex: '-1', class: it.danger ? 'danger' : '',
      onclick: () => { wrap.close(true); it.run(); },
    }, it.label))));
    menu.hidden = false;
    button.setAttribute('aria-expanded', 'true');
    openMenu = wrap;
    entries()[0]?.focus();
  }
  button.addEventListener('click', (e) => {
    e.stopPropagation();
    if (menu.hidden) open(); else wrap.close();
  });
  button.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown') { e.preventDefault(); open(); }
  });
  menu.addEventListener('keydown', (e) => {
    const all = entries();
    const i = all.indexOf(document.activeElement);
    const moves = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 };
    if (e.key in moves) {
      e.preventDefault();
      all[(moves[e.key] + all.length) % all.length].focus();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      wrap.close(true);
    } else if (e.key === 'Tab') {
      wrap.close();
    }
  });
  return wrap;
}

/** A paged table with a name filter and "Load more". */
export function pagedTable({ path, label, columns, row, emptyText }) {
  const tbody = h('tbody');
  const more = h('button', { type: 'button', class: 'btn', hidden: true }, 'Load more');
  const empty = h('p', { class: 'empty', hidden: true }, emptyText);
  const filter = h('input', { type: 'search', placeholder: 'Filter by name', 'aria-label': `Filter ${label} by name` });
  let cursor = null;
  const refreshEmpty = () => { empty.hidden = tbody.rows.length > 0; };
  async function load(reset) {
    if (reset) { cursor = null; tbody.replaceChildren(); }
    const p = await page(path, { cursor, name: filter.value.trim() });
    tbody.append(...p.items.map((it) => row(it, refreshEmpty)));
    cursor = p.nextCursor;
    more.hidden = !cursor;
    refreshEmpty();
  }
  const fail = (e) => toast(e.message, 'error');
  more.addEventListener('click', () => load(false).catch(fail));
  let timer;
  filter.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => load(true).catch(fail), 250); });
  const el = [
    h('div', { class: 'toolbar' }, filter),
    h('div', { class: 'card' }, h('table', { class: 'grid', 'aria-label': label },
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)),
        h('th', { scope: 'col', class: 'row-actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
      tbody), empty),
    h('div', { class: 'pager' }, more),
  ];
  return { el, load: () => load(true) };
}
