// The web console in Debian's Chromium, headless, driven by playwright-core (no browser
// download). Run by sip-tests/tests/browser.rs, which starts the real server with SIPp phones
// and a SIPp carrier and passes:
//   DIALBRIDGE_URL   the REST API (http://127.0.0.1:PORT)
//   DIALBRIDGE_SECRET a secret key of the account
//   DIAL_STRING      the customer number to call (the carrier answers, rings 1.5 s with a
//                    script tag as reason phrase, answers, hangs up after a few seconds)
//   CALLBACK_URL     a receiver that fails the first delivery
//   SCREENSHOT_DIR   where the screenshots go (target/console-screenshots)
//   CHROMIUM         the browser (default /usr/bin/chromium)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const base = env.DIALBRIDGE_URL;
const XSS = '<script>alert(1)</script>';
const shots = env.SCREENSHOT_DIR || 'screenshots';

let browser;
let context;
let page;
let profile;
const problems = [];
const dialogs = [];

before(async () => {
  if (!base) return;
  mkdirSync(shots, { recursive: true });
  profile = mkdtempSync(join(tmpdir(), 'dialbridge-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1366, height: 860 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  browser = context;
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    const t = m.text();
    // A 404 for /favicon.ico and API answers the test asks for are not problems.
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(t)) problems.push(`console: ${t}`);
  });
  page.on('dialog', async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

const shot = (name, fullPage = false) => page.screenshot({ path: join(shots, `${name}.png`), fullPage });

test('the console: sign in, place a call, watch it live, its ladder, its callbacks, the log, registrations', { skip: !base && 'run through sip-tests (DIALBRIDGE_URL unset)' }, async () => {
  const resp = await page.goto(`${base}/console`);
  const csp = resp.headers()['content-security-policy'] ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe/);

  // Sign in, with the keyboard.
  await page.getByLabel('Secret key').fill('sk_wrong');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').filter({ hasText: 'refused' }).waitFor();
  await shot('01-sign-in');
  await page.getByLabel('Secret key').fill(env.DIALBRIDGE_SECRET);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Live calls' }).waitFor();
  const stored = await page.evaluate(() => ({
    session: sessionStorage.getItem('dialbridge.secret_key'),
    local: JSON.stringify(localStorage),
    cookies: document.cookie,
  }));
  assert.equal(stored.session, env.DIALBRIDGE_SECRET, 'kept in session storage');
  assert.ok(!stored.local.includes(env.DIALBRIDGE_SECRET) && !stored.cookies.includes(env.DIALBRIDGE_SECRET));

  // Record every status the live table shows, without a reload in between.
  await page.evaluate(() => {
    window.__noReload = true;
    window.__seen = [];
    const table = document.querySelector('#live-calls');
    const look = () => {
      for (const cell of table.querySelectorAll('[data-call-id] .call-status')) {
        const s = cell.textContent.trim();
        if (window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s);
      }
    };
    new MutationObserver(look).observe(table, { subtree: true, childList: true, characterData: true });
  });

  // Place the call with the Call button (through the SDK), keyboard only.
  await page.getByLabel('Customer number').fill(env.DIAL_STRING);
  await page.getByLabel('Callback URL').fill(env.CALLBACK_URL);
  await page.getByLabel('Customer number').focus();
  await page.keyboard.press('Enter');
  const placed = page.locator('#call-result a');
  await placed.waitFor();
  const callId = (await placed.textContent()).trim();
  assert.match(callId, /^call_/);

  const row = page.locator(`#live-calls tr[data-call-id="${callId}"]`);
  await row.locator('.status.ringing').waitFor({ timeout: 20_000 });
  await row.locator('.status.in-progress').waitFor({ timeout: 20_000 });
  await page.waitForTimeout(2500); // a duration on the clock for the picture
  await shot('02-live-call-in-progress');
  await row.locator('.status.completed').waitFor({ timeout: 30_000 });
  const seen = await page.evaluate(() => ({ seen: window.__seen, same: window.__noReload === true }));
  assert.ok(seen.same, 'the page was not reloaded');
  const order = ['ringing', 'in-progress', 'completed'].map((s) => seen.seen.indexOf(s));
  assert.ok(order.every((i) => i >= 0) && order[0] < order[1] && order[1] < order[2], `statuses seen: ${seen.seen}`);
  assert.equal(await page.locator('#live-feed li').count() > 0, true, 'the event feed shows events');
  await shot('03-live-call-completed');

  // Its ladder, reached with the keyboard.
  await row.locator('a').focus();
  await page.keyboard.press('Enter');
  const ladder = page.locator('#ladder');
  await ladder.waitFor();
  await ladder.getByText('INVITE', { exact: false }).first().waitFor();
  const ladderText = await ladder.textContent();
  for (const want of ['Agent leg', 'dialbridge', 'Customer leg', 'INVITE', 'ACK', 'BYE', '200 OK', 'callback']) {
    assert.ok(ladderText.includes(want), `the ladder shows ${want}: ${ladderText}`);
  }
  // The carrier's hostile reason phrase is shown as those characters, and is no element.
  const hostile = ladder.getByText(`180 ${XSS}`, { exact: true });
  assert.equal(await hostile.count(), 1, 'the reason phrase is shown as text');
  assert.equal(await page.locator('#ladder script, #main script').count(), 0);
  assert.deepEqual(dialogs, [], 'no script ran');
  // Callback deliveries with their retry state: the receiver failed the first one.
  const callbacks = page.locator('#callbacks');
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#callbacks tbody tr')];
    return rows.length >= 3 && rows.every((r) => r.textContent.includes('delivered'));
  }, null, { timeout: 30_000 });
  const cbText = await callbacks.textContent();
  assert.ok(/ringing/.test(cbText) && /in-progress/.test(cbText) && /completed/.test(cbText), cbText);
  const attempts = await callbacks.locator('tbody tr td:nth-child(4)').allTextContents();
  assert.ok(attempts.some((a) => Number(a) >= 2), `a retried delivery: ${attempts}`);
  await shot('04-call-ladder', true);

  // The call log, filtered and paged.
  await page.getByRole('link', { name: 'Call log', exact: true }).click();
  await page.getByRole('heading', { name: 'Call log' }).waitFor();
  await page.locator(`#log-rows tr[data-call-id="${callId}"]`).waitFor();
  await page.getByLabel('Status').selectOption('completed');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.locator(`#log-rows tr[data-call-id="${callId}"]`).waitFor();
  await page.getByLabel('Status').selectOption('busy');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.getByText('No calls match.').waitFor();
  await page.getByLabel('Status').selectOption('');
  await page.getByLabel('Per page').selectOption('10');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.locator(`#log-rows tr[data-call-id="${callId}"]`).waitFor();
  // Pages of 10, newest first: this call heads the first; the rest follow on the next.
  const total = Number(env.SEEDED_CALLS || 0) + 1;
  const rows = page.locator('#log-rows tr[data-call-id]');
  assert.equal(await rows.count(), Math.min(10, total));
  assert.equal(await rows.first().getAttribute('data-call-id'), callId);
  await shot('05-call-log');
  if (total > 10) {
    await page.getByRole('button', { name: 'Older →' }).click();
    await page.getByText('Page 2').waitFor();
    assert.equal(await rows.count(), total - 10);
    assert.equal(await page.locator(`#log-rows tr[data-call-id="${callId}"]`).count(), 0);
    await page.getByRole('button', { name: '← Newer' }).click();
    await page.getByText('Page 1').waitFor();
    await page.locator(`#log-rows tr[data-call-id="${callId}"]`).waitFor();
  }

  // Registrations per user and device.
  await page.getByRole('link', { name: 'Registrations', exact: true }).click();
  await page.getByRole('heading', { name: 'Registrations' }).waitFor();
  await page.getByText('alice-desk').first().waitFor();
  await page.locator('td.mono', { hasText: 'sip:alice-desk@' }).first().waitFor();
  await shot('06-registrations');

  // Signing out forgets the key.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('dialbridge.secret_key')), null);

  assert.deepEqual(problems, [], 'no script error and no policy violation');
});

test('the SDK in a page of another origin: CORS, the client secret from the app backend, typed errors, the stream', { skip: !base && 'run through sip-tests (DIALBRIDGE_URL unset)' }, async () => {
  const { readFileSync } = await import('node:fs');
  const { fileURLToPath } = await import('node:url');
  const sdk = readFileSync(fileURLToPath(new URL('../dist/index.js', import.meta.url)), 'utf8');
  const users = await (await fetch(`${base}/v1/users`, { headers: { Authorization: `Bearer ${env.DIALBRIDGE_SECRET}` } })).json();
  const user = users.data[0].id;
  let sessions = 0;
  // The application's own web server, on another port (so another origin): its page, the
  // SDK, and its backend's endpoint that makes a client secret with the secret key.
  const { createServer } = await import('node:http');
  const appServer = createServer(async (req, res) => {
    if (req.url === '/session' && req.method === 'POST') {
      sessions += 1;
      const r = await fetch(`${base}/v1/client_sessions`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${env.DIALBRIDGE_SECRET}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ user_id: user }),
      });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(await r.text());
    }
    if (req.url === '/sdk.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      return res.end(sdk);
    }
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<!doctype html><title>CRM</title><p>CRM</p>');
  });
  await new Promise((resolve) => appServer.listen(0, '127.0.0.1', resolve));
  const app = `http://127.0.0.1:${appServer.address().port}`;
  try {
    const appPage = await context.newPage();
    appPage.on('pageerror', (e) => problems.push(`app page error: ${e.message}`));
    await appPage.goto(`${app}/index.html`);
    const pk = (await (await fetch(`${base}/v1/publishable_keys`, { headers: { Authorization: `Bearer ${env.DIALBRIDGE_SECRET}` } })).json()).data[0].key;
    const result = await appPage.evaluate(async ({ api, pk, app }) => {
      const { loadDialbridge, InvalidRequestError } = await import(`${app}/sdk.js`);
      const db = await loadDialbridge(pk, {
        apiBase: api,
        fetchClientSecret: async () => (await fetch(`${app}/session`, { method: 'POST' })).json(),
      });
      const opened = new Promise((resolve) => db.on('open', resolve));
      const list = await db.calls.list({ limit: 5 });
      let refused;
      try {
        await db.calls.create({ dialString: 'not a number' });
      } catch (e) {
        refused = { typed: e instanceof InvalidRequestError, code: e.code, status: e.status };
      }
      await opened;
      db.close();
      return { origin: location.origin, calls: list.data.length, refused };
    }, { api: base, pk, app });
    assert.notEqual(result.origin, new URL(base).origin, 'the page is of another origin');
    assert.ok(result.calls >= 1, JSON.stringify(result));
    assert.equal(result.refused?.typed, true, JSON.stringify(result));
    assert.equal(result.refused?.status, 422);
    assert.equal(sessions, 1, 'one client secret, fetched through the app backend');
  } finally {
    appServer.closeAllConnections();
    appServer.close();
  }
  assert.deepEqual(problems, []);
});
