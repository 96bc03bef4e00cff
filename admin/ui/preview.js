// Live preview: the stream exactly as one application receives it. The
// operator enters the application's Client Secret; the page swaps it for a
// short-lived token at /connect/token (as the integration would) and reads
// /v1/stream/telemetry with it. Nothing is stored; leaving the page stops it.
import { h } from './dom.js';
import { field, showErrors } from './widgets.js';

const KEEP = 20;

/** Returns `{el, stop}`. */
export function livePreview(app) {
  const secret = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false', class: 'secret' });
  const start = h('button', { type: 'submit', class: 'btn primary' }, 'Start preview');
  const stopBtn = h('button', { type: 'button', class: 'btn', hidden: true }, 'Stop');
  const status = h('p', { class: 'preview-status', role: 'status' });
  const tbody = h('tbody');
  const table = h('table', { class: 'grid events', hidden: true, 'aria-label': 'Last events received' },
    h('thead', {}, h('tr', {}, ['Event', 'Device', 'Time', 'Data'].map((c) => h('th', { scope: 'col' }, c)))), tbody);
  const form = h('form', { class: 'preview-form', novalidate: true },
    field('secret', 'Client Secret', secret, 'Only used to get a token for this preview; not stored.'),
    h('div', { class: 'preview-buttons' }, start, stopBtn));
  let abort = null;
  let count = 0;

  function stop(message) {
    abort?.abort();
    abort = null;
    start.hidden = false;
    stopBtn.hidden = true;
    secret.disabled = false;
    if (message) status.textContent = message;
  }

  function show(ev) {
    count++;
    let data = ev.data;
    try { data = JSON.parse(ev.data); } catch { /* not JSON: shown as is */ }
    const known = ['telemetry', 'anomaly'].includes(ev.event);
    tbody.prepend(h('tr', { class: known ? '' : 'control' },
      h('td', {}, h('span', { class: `badge ev-${ev.event}` }, ev.event)),
      h('td', {}, known ? h('code', {}, data.deviceId) : ''),
      h('td', {}, known && data.ts ? new Date(data.ts).toLocaleTimeString() : ''),
      h('td', {}, h('code', { class: 'payload' }, JSON.stringify(known ? (data.readings ?? data) : data)))));
    while (tbody.rows.length > KEEP) tbody.lastChild.remove();
    table.hidden = false;
    status.textContent = `Connected: ${count} event${count === 1 ? '' : 's'} received (last ${KEEP} shown).`;
    if (ev.event === 'revoked' || ev.event === 'token-expired') {
      stop(`The stream was closed: ${ev.event} (${data.reason ?? ''}).`);
    }
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!showErrors(form, secret.value ? {} : { secret: 'Enter the Client Secret of this application.' })) return;
    start.disabled = true;
    status.textContent = 'Getting a token…';
    // `credentials: 'omit'`: the token endpoint answers a refusal with
    // `WWW-Authenticate: Basic`, which would otherwise pop up the browser's
    // own login prompt.
    const res = await fetch('/connect/token', {
      method: 'POST', credentials: 'omit', cache: 'no-store',
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: app.clientId, client_secret: secret.value }),
    }).catch(() => null);
    const body = await res?.json().catch(() => null);
    start.disabled = false;
    if (!res?.ok || !body?.access_token) {
      status.textContent = '';
      showErrors(form, { secret: res?.status === 401
        ? 'Refused: wrong secret, or the application is disabled or expired.'
        : (body?.error_description || 'No token: the server refused or cannot be reached.') });
      return;
    }
    secret.value = '';
    secret.disabled = true;
    start.hidden = true;
    stopBtn.hidden = false;
    count = 0;
    tbody.replaceChildren();
    abort = new AbortController();
    status.textContent = 'Connecting…';
    const signal = abort.signal;
    try {
      const stream = await fetch('/v1/stream/telemetry', {
        headers: { Authorization: `Bearer ${body.access_token}`, Accept: 'text/event-stream' },
        signal, cache: 'no-store', credentials: 'omit',
      });
      if (!stream.ok) throw new Error(`the stream answered ${stream.status}`);
      status.textContent = 'Connected: waiting for events…';
      await readEvents(stream, show);
      stop('The stream ended.');
    } catch (err) {
      if (!signal.aborted) stop(`The stream failed: ${err.message}`);
    }
  });
  stopBtn.addEventListener('click', () => stop('Stopped.'));

  const el = h('section', { class: 'card preview', 'aria-labelledby': 'preview-title' },
    h('h2', { id: 'preview-title' }, 'Live preview'),
    h('p', { class: 'muted' }, 'See exactly what this application receives: only its devices, anomalies only if included, and the control events (permissions, revoked…).'),
    form, status, table);
  return { el, stop: () => stop() };
}

/** Reads Server-Sent Events from a fetch response until it ends. */
async function readEvents(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const ev = { event: 'message', data: [] };
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const key = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (key === 'data') ev.data.push(val);
        else if (key === 'event') ev.event = val;
      }
      if (ev.data.length) onEvent({ event: ev.event, data: ev.data.join('\n') });
    }
  }
}
