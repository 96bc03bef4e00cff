// Browser tests of the operator's page (/admin/): starts the real binary on
// ephemeral ports, drives Debian's Chromium through the External
// Applications manual's whole flow, and proves the effects at /connect/token.
//
//   cargo build && (cd tests/ui && npm ci && node run.mjs)
//
// Env: SENSEGATE_BIN (default target/debug/sensegate), CHROMIUM (default
// /usr/bin/chromium), HEADED=1 to watch, VERBOSE=1 for the server's log.
// Screenshots go to tests/ui/artifacts/; with UPDATE_SCREENSHOTS=1 the list
// and create screens also replace the README's in docs/screenshots/.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const BIN = process.env.SENSEGATE_BIN || path.join(ROOT, 'target/debug/sensegate');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ART = path.join(HERE, 'artifacts');
const DOCS = path.join(ROOT, 'docs/screenshots');
const KEY = `ui-test-${randomBytes(16).toString('hex')}`;
let kioskExpiry;
const DEADLINE_MS = 170_000;

const results = [];
const problems = []; // console errors, page errors, CSP violations
let server;
let context;
const tmp = mkdtempSync(path.join(tmpdir(), 'sg-ui-'));

const killer = setTimeout(() => {
  console.error(`ui: gave up after ${DEADLINE_MS / 1000}s`);
  finish(2);
}, DEADLINE_MS);

// --- harness ---

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`  ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`  FAIL ${name}: ${e.stack || e}`);
    await shot(`failure-${results.length}`).catch(() => {});
    // Start the next check from the list, without a dialog in the way.
    await page.goto(`${BASE}/admin/#/applications`).catch(() => {});
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function until(what, fn, ms = 8000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let page;
async function shot(name, { docs, fullPage = false } = {}) {
  const file = path.join(ART, `${name}.png`);
  // The README's pictures without a passing toast.
  if (docs) await page.evaluate(() => document.getElementById('toast').replaceChildren());
  await page.screenshot({ path: file, fullPage });
  if (docs && process.env.UPDATE_SCREENSHOTS) copyFileSync(file, path.join(DOCS, docs));
}

async function finish(code) {
  clearTimeout(killer);
  await context?.close().catch(() => {});
  server?.kill('SIGTERM');
  rmSync(tmp, { recursive: true, force: true });
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  if (problems.length) console.log(`browser console problems:\n  ${problems.join('\n  ')}`);
  console.log(`ui: ${passed} passed, ${failed} failed`);
  process.exit(code || (failed ? 1 : 0));
}

function startServer() {
  return new Promise((resolve, reject) => {
    server = spawn(BIN, [
      'serve', '--http-addr', '127.0.0.1:0', '--quic-addr', '127.0.0.1:0', '--data-dir', path.join(tmp, 'data'),
    ], { env: { ...process.env, SENSEGATE_BOOTSTRAP_ADMIN_KEY: KEY, SENSEGATE_LOG: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no "listening" line in 30 s:\n${out}`)), 30_000);
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening http=(\S+) quic=(\S+)/);
      if (m) { clearTimeout(timer); QUIC = m[2]; resolve(`http://${m[1]}`); }
    });
    server.stderr.on('data', (d) => { if (process.env.VERBOSE) process.stderr.write(d); });
    server.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}):\n${out}`)); });
    server.on('error', reject);
  });
}

// --- the API, from the test (setup and proofs) ---

let BASE;
let QUIC;
const ingestKeys = {};
async function adminApi(method, p, body) {
  const res = await fetch(`${BASE}/api/v1${p}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: res.status === 204 ? null : await res.json() };
}

async function token(clientId, clientSecret) {
  const res = await fetch(`${BASE}/connect/token`, {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret }),
  });
  return { status: res.status, body: await res.json() };
}

async function tokenWorks(id, secret) {
  const t = await token(id, secret);
  return t.status === 200 && typeof t.body.access_token === 'string' && t.body.token_type === 'Bearer';
}

async function tokenRefused(id, secret) {
  const t = await token(id, secret);
  return t.status === 401 && t.body.error === 'invalid_client';
}

/** Publishes JSON lines as a device with the real `sensegate publish`. */
function publish(device, events) {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ['publish', '--server', QUIC, '--device', device, '--key', ingestKeys[device],
      '--ca', path.join(tmp, 'data', 'cert.pem')], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`publish exited ${code}: ${out}`))));
    p.stdin.end(events.map((e) => JSON.stringify(e)).join('\n') + '\n');
  });
}

const inDays = (n) => {
  const d = new Date(Date.now() + n * 86400e3);
  const pad = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
};

// --- page helpers ---

const row = (name) => page.locator('tbody tr', { has: page.getByRole('link', { name, exact: true }) });

async function rowAction(name, action) {
  await row(name).getByRole('button', { name: `Actions for ${name}` }).click();
  await page.getByRole('menuitem', { name: action, exact: true }).click();
}

async function statusOf(name) {
  return (await row(name).locator('td.status').innerText()).trim();
}

/** Reads the credentials dialog: reveals the secret with the eye, copies the id with the copy button. */
async function readCredentials() {
  const dlg = page.getByRole('dialog');
  await dlg.waitFor();
  const idInput = dlg.getByLabel('Client ID', { exact: true });
  const secretInput = dlg.getByLabel('Client Secret', { exact: true });
  assert(await idInput.getAttribute('type') === 'password', 'Client ID hidden by default');
  assert(await secretInput.getAttribute('type') === 'password', 'Client Secret hidden by default');
  assert((await dlg.innerText()).includes('will not be shown again'), 'the dialog warns');
  await dlg.getByRole('button', { name: 'Show Client Secret' }).click();
  assert(await secretInput.getAttribute('type') === 'text', 'eye reveals the secret');
  const clientSecret = await secretInput.inputValue();
  await dlg.getByRole('button', { name: 'Hide Client Secret' }).click();
  assert(await secretInput.getAttribute('type') === 'password', 'eye hides it again');
  await dlg.getByRole('button', { name: 'Copy Client ID' }).click();
  await dlg.getByText('Copied').waitFor();
  const clientId = await page.evaluate(() => navigator.clipboard.readText());
  assert(clientId === await idInput.inputValue(), 'the copy button copies the Client ID');
  assert(/^sgc_/.test(clientId) && /^sgs_/.test(clientSecret), `credential shapes: ${clientId} ${clientSecret}`);
  return { clientId, clientSecret, done: async () => {
    await dlg.getByRole('button', { name: 'Done' }).click();
    await dlg.waitFor({ state: 'detached' });
    const html = await page.content();
    assert(!html.includes(clientSecret) && !html.includes(clientId), 'Done removes the values from the page');
  } };
}

async function fieldError(fieldName) {
  const el = page.locator(`[data-error-for="${fieldName}"]`);
  await el.waitFor({ state: 'visible' });
  return el.innerText();
}

// --- the flow ---

async function main() {
  rmSync(ART, { recursive: true, force: true });
  mkdirSync(ART, { recursive: true });
  mkdirSync(DOCS, { recursive: true });
  BASE = await startServer();
  console.log(`server at ${BASE}, chromium ${CHROMIUM}`);

  // Enough devices that the pickers must search and the lists must page.
  for (let i = 0; i < 240; i += 12) {
    await Promise.all(Array.from({ length: 12 }, (_, j) => {
      const n = String(i + j + 1).padStart(3, '0');
      return adminApi('POST', '/devices', { id: `sensor-${n}`, name: `Sensor ${n}` });
    }));
  }

  // One that expires while the test runs (the API only takes future dates).
  kioskExpiry = Date.now() + 3000;
  await adminApi('POST', '/applications', { name: 'Old kiosk', expiresAt: new Date(kioskExpiry).toISOString() });

  context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: !process.env.HEADED,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
    viewport: { width: 1440, height: 900 },
    locale: 'en-US',
    timezoneId: 'Europe/Berlin',
    permissions: ['clipboard-read', 'clipboard-write'],
  });
  context.setDefaultTimeout(10_000);
  page = context.pages()[0] || await context.newPage();
  // The API's refusals the flow provokes (wrong key, duplicate name, bad
  // name) are logged by the browser; anything else is a problem.
  const expected = /Failed to load resource: the server responded with a status of (400|401|409)/;
  page.on('console', (m) => {
    if (m.type() === 'error' && !expected.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The page must fetch nothing but its own origin.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(BASE)) return route.continue();
    problems.push(`external request: ${url}`);
    return route.abort();
  });

  const APP = 'Plant dashboard';
  let creds;

  await check('serves /admin/ with a strict CSP and signs in with the admin key only', async () => {
    const res = await page.goto(`${BASE}/admin`);
    assert(res.url() === `${BASE}/admin/`, `redirected to /admin/: ${res.url()}`);
    const csp = res.headers()['content-security-policy'] || '';
    assert(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `CSP: ${csp}`);
    await page.getByRole('heading', { name: 'SenseGate admin' }).waitFor();
    await shot('01-sign-in');
    await page.getByLabel('Admin API key').fill('not-a-key');
    await page.getByRole('button', { name: 'Sign in' }).click();
    assert((await fieldError('key')).includes('not valid'), 'a wrong key is refused next to the field');
    await page.getByLabel('Admin API key').fill(KEY);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'External Applications' }).waitFor();
    const stored = await page.evaluate(() => [JSON.stringify(sessionStorage), localStorage.length, document.cookie]);
    assert(stored[0].includes(KEY) && stored[1] === 0 && stored[2] === '', `key in sessionStorage only: ${stored}`);
  });

  await check('devices page: create a device, its ingest key shown once', async () => {
    await page.getByRole('link', { name: 'Devices', exact: true }).click();
    await page.getByRole('heading', { name: 'Devices' }).waitFor();
    for (const [id, name] of [['press-1', 'Press 1'], ['press-2', 'Press 2']]) {
      await page.getByLabel('Device ID').fill(id);
      await page.getByLabel('Name', { exact: true }).fill(name);
      await page.getByRole('button', { name: 'Create Device' }).click();
      const dlg = page.getByRole('dialog');
      await dlg.getByRole('button', { name: 'Show Ingest Key' }).click();
      const key = await dlg.getByLabel('Ingest Key', { exact: true }).inputValue();
      assert(key.startsWith('sgd_'), `ingest key: ${key}`);
      ingestKeys[id] = key;
      await dlg.getByRole('button', { name: 'Done' }).click();
      await dlg.waitFor({ state: 'detached' });
    }
    await page.locator('tbody tr', { hasText: 'press-2' }).waitFor();
    await page.locator('tbody tr', { hasText: 'press-2' }).getByRole('button', { name: 'Actions for Press 2' }).click();
    await page.getByRole('menuitem', { name: 'Rename' }).click();
    await page.getByRole('dialog').getByLabel('Name').fill('Press 2 (east)');
    await page.getByRole('dialog').getByRole('button', { name: 'Save' }).click();
    await page.locator('tbody tr', { hasText: 'Press 2 (east)' }).waitFor();
    assert((await adminApi('GET', '/devices/press-2')).body.name === 'Press 2 (east)', 'renamed');
    await shot('02-devices');
    const d = await adminApi('GET', '/devices/press-1');
    assert(d.status === 200 && d.body.name === 'Press 1', 'device created');
  });

  await check('device groups page: create a group with members from the searchable picker', async () => {
    await page.getByRole('link', { name: 'Device Groups', exact: true }).click();
    await page.getByRole('link', { name: 'Create Device Group' }).click();
    await page.getByLabel('Group Name').fill('Line A');
    const search = page.getByRole('searchbox', { name: 'Search Devices' });
    await search.fill('sensor-01');
    await until('10 matches', async () => (await page.locator('.options input').count()) === 10);
    // Keyboard: ArrowDown from the search into the list, Space toggles, and
    // the list is a single Tab stop.
    await search.focus();
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('Space');
    assert(await page.getByRole('checkbox', { name: /Sensor 011/ }).isChecked(), 'Space checks the focused device');
    await page.keyboard.press('Tab');
    assert(await page.evaluate(() => !document.activeElement.closest('.options')), 'Tab leaves the list');
    await page.getByRole('checkbox', { name: /Sensor 012/ }).check();
    await shot('03-group-create');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('heading', { name: 'Device Groups' }).waitFor();
    await row('Line A').waitFor();
    assert((await row('Line A').innerText()).includes('2'), 'group shows 2 devices');
    await shot('04-groups');
  });

  await check('create an application; credentials from the dialog (eye, copy) get a token', async () => {
    await page.getByRole('link', { name: 'External Applications', exact: true }).click();
    const create = page.getByRole('link', { name: 'Create New External Application' });
    const [box, vw] = [await create.boundingBox(), page.viewportSize()];
    assert(box.x + box.width > vw.width * 0.75, 'the Create button sits at the top right');
    await create.click();
    await page.getByLabel('Application Name').fill(APP);
    await page.getByLabel('Expiration Date').fill(inDays(90));
    await page.getByRole('switch', { name: 'Include Anomalies' }).check();
    const devices = page.getByRole('group', { name: 'Devices' });
    await devices.getByRole('searchbox').fill('press');
    await devices.getByRole('checkbox', { name: /Press 1/ }).check();
    await devices.getByRole('checkbox', { name: /Press 2 \(east\)/ }).check();
    await devices.getByRole('searchbox').fill('');
    const hint = await devices.locator('.hint').innerText();
    assert(hint.includes('Showing 100 of 242'), `the picker caps a long list: ${hint}`);
    await page.getByRole('group', { name: 'Device Groups' }).getByRole('checkbox', { name: /Line A/ }).check();
    await shot('05-create', { docs: 'create-application.png', fullPage: true });
    await page.getByRole('button', { name: 'Save' }).click();
    creds = await readCredentials();
    await shot('06-credentials');
    const saved = (await adminApi('GET', '/applications')).body.items.find((a) => a.name === APP);
    const full = (await adminApi('GET', `/applications/${saved.id}`)).body;
    assert(full.includeAnomalies && full.devices.sort().join() === 'press-1,press-2' && full.deviceGroups.length === 1,
      `saved as entered: ${JSON.stringify(full)}`);
    await creds.done();
    assert(await tokenWorks(creds.clientId, creds.clientSecret), 'the credentials get a token at /connect/token');
  });

  await check('the device picker stays fast with 5,000 devices', async () => {
    // Served by the test (creating 5,000 devices through the API takes minutes).
    const at = new Date().toISOString();
    const fake = Array.from({ length: 5000 }, (_, i) => ({
      id: `bulk-${i}`, name: `Bulk sensor ${i}`, metadata: {}, enabled: true, createdAt: at, updatedAt: at,
    }));
    await page.route(/\/api\/v1\/devices\?/, (route) => {
      const q = new URL(route.request().url()).searchParams;
      const from = Number(q.get('cursor') || 0);
      const to = from + Number(q.get('limit'));
      return route.fulfill({ json: { items: fake.slice(from, to), nextCursor: to < fake.length ? String(to) : null } });
    });
    const t0 = Date.now();
    await page.goto(`${BASE}/admin/#/applications/new`);
    await page.getByText('0 of 5000 selected').waitFor();
    const loadMs = Date.now() - t0;
    const devices = page.getByRole('group', { name: 'Devices' });
    assert(await devices.locator('.options input').count() === 100, 'at most 100 rows rendered');
    const searchMs = await page.evaluate(() => {
      const input = document.querySelector('fieldset[data-name="devices"] input[type="search"]');
      const t = performance.now();
      input.value = 'sensor 4999';
      input.dispatchEvent(new Event('input'));
      return performance.now() - t;
    });
    assert(await devices.locator('.options input').count() === 1, 'search narrows to one');
    await devices.getByRole('checkbox', { name: /Bulk sensor 4999/ }).check();
    await devices.getByRole('button', { name: 'Remove Bulk sensor 4999' }).waitFor();
    // Select every match of a search at once, then review the selection.
    await devices.getByRole('searchbox').fill('sensor 49');
    await devices.getByRole('button', { name: 'Select all 111 matches' }).click();
    await devices.getByText('111 of 5000 selected').waitFor();
    await devices.getByRole('searchbox').fill('');
    await devices.getByRole('checkbox', { name: 'Selected only' }).check();
    assert((await devices.locator('.hint').innerText()).includes('Showing 100 of 111'), 'selected only');
    await shot('05b-picker-5000');
    assert(searchMs < 150 && loadMs < 5000, `fast: load ${loadMs} ms, search ${searchMs.toFixed(1)} ms`);
    console.log(`       5,000 devices: form ready in ${loadMs} ms, search in ${searchMs.toFixed(1)} ms`);
    await page.unroute(/\/api\/v1\/devices\?/);
    await page.getByRole('link', { name: 'Cancel' }).click();
    await page.getByRole('heading', { name: 'External Applications' }).waitFor();
  });

  await check('list: name, local Created At, status, expiry badge when near', async () => {
    // Two more, for a realistic list: one expiring soon, one disabled.
    const soon = await adminApi('POST', '/applications', { name: 'Billing export', expiresAt: new Date(Date.now() + 5 * 86400e3).toISOString() });
    const old = await adminApi('POST', '/applications', { name: 'Legacy SCADA bridge', expiresAt: new Date(Date.now() + 400 * 86400e3).toISOString(), devices: ['press-1'] });
    await adminApi('POST', `/applications/${old.body.id}/disable`);
    assert(soon.status === 201 && old.status === 201, 'setup');
    await until('Old kiosk expired', async () => Date.now() > kioskExpiry + 200);
    await page.reload();
    await row(APP).waitFor();
    const cells = await row(APP).locator('td').allInnerTexts();
    const created = (await adminApi('GET', '/applications')).body.items.find((a) => a.name === APP).createdAt;
    const local = new Date(created).toLocaleString('en-US', { dateStyle: 'medium', timeStyle: 'short', timeZone: 'Europe/Berlin' });
    assert(cells[1] === local, `Created At in local time: ${cells[1]} vs ${local}`);
    assert(cells[2].trim() === 'Enabled', `status: ${cells[2]}`);
    assert(/Expires in 5 days/.test(await statusOf('Billing export')), 'near expiry is shown');
    assert((await statusOf('Legacy SCADA bridge')) === 'Disabled', 'disabled status');
    assert(/^Enabled\s*Expired /.test(await statusOf('Old kiosk')), `past expiry is shown: ${await statusOf('Old kiosk')}`);
    const headers = await page.locator('thead th').allInnerTexts();
    assert(headers.slice(0, 3).join('|') === 'EXTERNAL APPLICATION NAME|CREATED AT|STATUS', `headers: ${headers}`);
    await shot('07-list', { docs: 'applications-list.png' });
    // An unknown address lands on the list.
    await page.goto(`${BASE}/admin/#/no/such/page`);
    await until('redirect to the list', () => page.evaluate(() => location.hash === '#/applications'));
    await row(APP).waitFor();
  });

  await check('view: read-only details', async () => {
    await rowAction(APP, 'View');
    await page.getByRole('heading', { name: APP }).waitFor();
    const text = await page.locator('dl.details').innerText();
    for (const s of ['Include Anomalies\nYes', 'Press 1', 'Press 2 (east)', 'Line A', 'Enabled', creds.clientId]) {
      assert(text.includes(s), `details show ${s}: ${text}`);
    }
    assert(await page.locator('dl.details input').count() === 0, 'nothing editable');
    await shot('08-view');
  });

  await check('live preview on the View page: the stream exactly as the application sees it', async () => {
    const secret = page.getByLabel('Client Secret', { exact: true });
    await secret.fill('sgs_wrong');
    await page.getByRole('button', { name: 'Start preview' }).click();
    assert((await fieldError('secret')).includes('Refused'), 'a wrong secret is refused');
    await secret.fill(creds.clientSecret);
    await page.getByRole('button', { name: 'Start preview' }).click();
    await page.getByText('Connected: waiting for events').waitFor();
    assert(await secret.inputValue() === '', 'the secret is wiped once used');
    const now = Date.now();
    await publish('press-1', [
      { ts: new Date(now).toISOString(), kind: 'reading', readings: { temperature: 71.5 } },
      { ts: new Date(now + 1000).toISOString(), kind: 'anomaly', readings: { temperature: 99.1 } },
    ]);
    await until('2 events', async () => (await page.locator('table.events tbody tr').count()) === 2);
    const rows = await page.locator('table.events tbody tr').allInnerTexts();
    assert(rows[0].includes('anomaly') && rows[0].includes('press-1') && rows[0].includes('99.1'), `anomaly: ${rows[0]}`);
    assert(rows[1].includes('telemetry') && rows[1].includes('71.5'), `telemetry: ${rows[1]}`);
    await shot('08b-live-preview', { fullPage: true });
    const closed = () => page.waitForEvent('requestfailed', (r) => r.url().includes('/v1/stream/telemetry'));
    let aborted = closed();
    await page.getByRole('button', { name: 'Stop' }).click();
    await page.getByText('Stopped.').waitFor();
    await aborted;
    // Leaving the page closes the stream too.
    await secret.fill(creds.clientSecret);
    await page.getByRole('button', { name: 'Start preview' }).click();
    await page.getByText('Connected: waiting for events').waitFor();
    aborted = closed();
    await page.getByRole('link', { name: 'Back to list' }).click();
    await aborted;
    await page.goBack();
    await page.getByRole('heading', { name: APP }).waitFor();
  });

  await check('edit: name, include anomalies, devices; Update', async () => {
    await page.getByRole('link', { name: 'Edit' }).click();
    await page.getByLabel('Application Name').fill(`${APP} v2`);
    await page.getByRole('switch', { name: 'Include Anomalies' }).uncheck();
    await page.getByRole('button', { name: 'Remove Press 2 (east)' }).click();
    await shot('09-edit');
    await page.getByRole('button', { name: 'Update' }).click();
    await page.getByRole('heading', { name: `${APP} v2` }).waitFor();
    const text = await page.locator('dl.details').innerText();
    assert(text.includes('Include Anomalies\nNo') && !text.includes('Press 2'), `updated: ${text}`);
    // Cancel leaves it as it is.
    await page.getByRole('link', { name: 'Edit' }).click();
    await page.getByLabel('Application Name').fill('not saved');
    await page.getByRole('link', { name: 'Cancel' }).click();
    await page.getByRole('heading', { name: `${APP} v2` }).waitFor();
  });

  const NAME = `${APP} v2`;

  await check('field errors: duplicate name, past date, invisible character', async () => {
    await page.getByRole('link', { name: 'External Applications', exact: true }).click();
    await page.getByRole('link', { name: 'Create New External Application' }).click();
    await page.getByLabel('Application Name').fill(' plant DASHBOARD v2 ');
    await page.getByLabel('Expiration Date').fill(inDays(-1));
    await page.getByRole('button', { name: 'Save' }).click();
    assert((await fieldError('expiresAt')).includes('past'), 'a past date is refused next to the date');
    await page.getByLabel('Expiration Date').fill(inDays(30));
    await page.getByRole('button', { name: 'Save' }).click();
    const dup = await fieldError('name');
    assert(/already|exists|taken|use/i.test(dup), `the API's 409 shows next to the name: ${dup}`);
    assert(await page.locator('[data-error-for="expiresAt"]').isHidden(), 'the fixed date error is gone');
    await shot('10-field-errors');
    await page.getByLabel('Application Name').fill('Invisible\u200bname');
    await page.getByRole('button', { name: 'Save' }).click();
    await until('API field error', async () => /invisible|control|character/i.test(await fieldError('name')));
    assert(await page.getByLabel('Application Name').getAttribute('aria-invalid') !== null, 'field marked invalid');
    await page.getByRole('link', { name: 'Cancel' }).click();
  });

  await check('rotate secret: confirmation, new secret in the dialog; old refused, new accepted', async () => {
    await rowAction(NAME, 'Rotate Secret');
    const confirm = page.getByRole('dialog');
    assert((await confirm.innerText()).includes('stops working'), 'asks first');
    await shot('11-rotate-confirm');
    await confirm.getByRole('button', { name: 'Rotate Secret' }).click();
    await page.getByText('New Client Secret').waitFor();
    const fresh = await readCredentials();
    await fresh.done();
    assert(fresh.clientId === creds.clientId, 'Client ID unchanged');
    assert(fresh.clientSecret !== creds.clientSecret, 'a new secret');
    assert(await tokenRefused(creds.clientId, creds.clientSecret), 'the old secret is refused');
    assert(await tokenWorks(fresh.clientId, fresh.clientSecret), 'the new secret is accepted');
    creds = fresh;
  });

  await check('disable / enable with the keyboard: status column flips, tokens follow', async () => {
    const kebab = row(NAME).getByRole('button', { name: `Actions for ${NAME}` });
    await kebab.focus();
    await page.keyboard.press('ArrowDown');
    await until('menu focus', () => page.evaluate(() => document.activeElement?.getAttribute('role') === 'menuitem'));
    for (let i = 0; i < 8; i++) {
      if (await page.evaluate(() => document.activeElement.textContent) === 'Disable') break;
      await page.keyboard.press('ArrowDown');
    }
    await page.keyboard.press('Enter');
    await until('Disabled', async () => (await statusOf(NAME)) === 'Disabled');
    assert(await page.evaluate(() => document.activeElement?.getAttribute('aria-label')) === `Actions for ${NAME}`, 'focus back on the menu button');
    assert(await tokenRefused(creds.clientId, creds.clientSecret), 'disabled: token refused');
    await shot('12-disabled');
    await rowAction(NAME, 'Enable');
    await until('Enabled', async () => (await statusOf(NAME)) === 'Enabled');
    assert(await tokenWorks(creds.clientId, creds.clientSecret), 'enabled: token issued');
    // Escape closes the menu.
    await kebab.click();
    await page.getByRole('menu').waitFor();
    await page.keyboard.press('Escape');
    await page.getByRole('menu').waitFor({ state: 'hidden' });
  });

  await check('delete: confirmation, Cancel keeps it, Delete removes the row', async () => {
    await rowAction(NAME, 'Delete');
    await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
    assert(await row(NAME).count() === 1, 'cancel keeps it');
    await rowAction(NAME, 'Delete');
    await shot('13-delete-confirm');
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await row(NAME).waitFor({ state: 'detached' });
    await page.reload();
    await row('Billing export').waitFor();
    assert(await row(NAME).count() === 0, 'gone after reload too');
    assert(await tokenRefused(creds.clientId, creds.clientSecret), 'deleted: token refused');
  });

  await check('names are text, never markup', async () => {
    const name = '<img src=x onerror=window.pwned=1> & <b>co</b>';
    await adminApi('POST', '/applications', { name, expiresAt: new Date(Date.now() + 30 * 86400e3).toISOString() });
    await page.reload();
    await row(name).waitFor();
    assert(await row(name).locator('img, b').count() === 0 && !(await page.evaluate(() => window.pwned)), 'not interpreted');
    await rowAction(name, 'View');
    await page.getByRole('heading', { name }).waitFor();
    await page.goBack();
  });

  await check('clean at laptop width: no horizontal scrolling, menu inside the viewport', async () => {
    for (const [w, h] of [[1280, 800], [1366, 768]]) {
      await page.setViewportSize({ width: w, height: h });
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert(overflow <= 0, `${w}px: page wider than the window by ${overflow}px`);
    }
    await row('Billing export').getByRole('button', { name: 'Actions for Billing export' }).click();
    const menu = await page.getByRole('menu').boundingBox();
    assert(menu.x >= 0 && menu.x + menu.width <= 1366, `menu inside: ${JSON.stringify(menu)}`);
    await page.keyboard.press('Escape');
    await shot('14-list-laptop');
    await page.setViewportSize({ width: 1440, height: 900 });
  });

  await check('sign out forgets the key', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'SenseGate admin' }).waitFor();
    assert(await page.evaluate(() => sessionStorage.length) === 0, 'sessionStorage cleared');
    await page.reload();
    await page.getByLabel('Admin API key').waitFor();
    // A key refused mid-session (revoked) brings the sign-in page back.
    await page.evaluate(() => sessionStorage.setItem('sensegate.adminKey', 'revoked-key'));
    await page.reload();
    assert((await fieldError('key')).includes('no longer accepted'), 'a refused session key asks to sign in again');
    assert(await page.evaluate(() => sessionStorage.length) === 0, 'and is forgotten');
  });

  await check('no console errors, CSP violations or external requests', async () => {
    assert(problems.length === 0, problems.join('; '));
  });
}

main().then(() => finish(0), (e) => {
  console.error(`ui: setup failed: ${e.stack || e}`);
  results.push({ name: 'setup', ok: false });
  finish(1);
});
