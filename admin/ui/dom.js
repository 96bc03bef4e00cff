// Tiny DOM helpers: element builder, dates, toasts, dialogs.

/** h('button', {class: 'btn', onclick}, 'Save') → an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value' || k === 'checked') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren(...children.flat().filter(Boolean));
  return el;
}

export const localDateTime = (iso) =>
  iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }) : '';

export const localDate = (iso) =>
  iso ? new Date(iso).toLocaleDateString(undefined, { dateStyle: 'medium' }) : '';

/** `YYYY-MM-DD` of a Date in local time (for <input type=date>). */
export function isoDay(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** A short status message that fades out. */
export function toast(message, kind = 'ok') {
  const box = document.getElementById('toast');
  const item = h('div', { class: `toast ${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), 4000);
}

/** A modal <dialog>; resolves with the value passed to `close(value)`. */
export function modal(build, { dismissable = true, label } = {}) {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: 'modal', 'aria-label': label });
    const close = (value) => {
      dlg.close();
      dlg.remove();
      resolve(value);
    };
    dlg.addEventListener('cancel', (e) => {
      e.preventDefault();
      if (dismissable) close(undefined);
    });
    dlg.append(...[build(close)].flat());
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** Asks before a destructive action; resolves true on confirm. */
export function confirmDialog({ title, body, action, danger = false }) {
  return modal(
    (close) => [
      h('h2', {}, title),
      h('p', {}, body),
      h('div', { class: 'actions' },
        h('button', { class: 'btn', type: 'button', onclick: () => close(false) }, 'Cancel'),
        h('button', {
          class: danger ? 'btn danger' : 'btn primary', type: 'button', autofocus: true,
          onclick: () => close(true),
        }, action)),
    ],
    { label: title },
  ).then(Boolean);
}
