// The browser phone (/console/phone.html) in Debian's Chromium, headless, driven by
// playwright-core. Run by sip-tests/tests/browser.rs, which starts the real server with a
// wss: listener (a test certificate) and a SIPp carrier (plain RTP, echoing what it gets and
// playing a recording), and passes:
//   DIALBRIDGE_URL    the REST API (http://127.0.0.1:PORT)
//   DIALBRIDGE_SECRET a secret key of the account
//   WSS_URL           the SIP over secure WebSocket listener (wss://127.0.0.1:PORT)
//   SIP_URI, SIP_PASSWORD  the agent's browser device
//   USER_ID           the agent; DIAL_STRING the customer number
//   SCREENSHOT_DIR    where the screenshots go; CHROMIUM the browser
// It registers the page, places a click-to-call through the REST API, answers it in the
// page, waits until audio flows both ways (the page's getStats), hangs up through the API,
// and prints one line `PHONE_RESULT {json}` for the Rust side to check against the relay.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const base = env.DIALBRIDGE_URL;
const shots = env.SCREENSHOT_DIR || 'screenshots';
let context;
let page;
let profile;
const problems = [];
const consoleLines = [];

before(async () => {
  if (!base) return;
  mkdirSync(shots, { recursive: true });
  profile = mkdtempSync(join(tmpdir(), 'dialbridge-phone-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 900, height: 760 },
    ignoreHTTPSErrors: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // A fake microphone (a beep), granted without asking.
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      // The WSS listener's certificate is the test's own.
      '--ignore-certificate-errors',
      // Everything is on loopback: let WebRTC use it, and show real addresses.
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    consoleLines.push(`${m.type()}: ${m.text()}`);
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function api(method, path, body) {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${env.DIALBRIDGE_SECRET}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
}

const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`) });

async function state(id) {
  return page.locator(id).getAttribute('data-state');
}

process.on('exit', (code) => {
  if (code !== 0) console.log(`--- browser console ---\n${consoleLines.slice(-200).join('\n')}`);
});

async function waitState(id, want, timeout = 20000) {
  await page.waitForFunction(
    ([sel, w]) => document.querySelector(sel)?.dataset.state === w,
    [id, want],
    { timeout },
  ).catch(async (e) => {
    throw new Error(`${id} never became ${want} (is ${await state(id)}: ${await page.locator(id).textContent()}): ${e.message}`);
  });
}

test('the browser phone registers over WSS, answers a click-to-call and exchanges audio', { skip: !base && 'run through sip-tests (DIALBRIDGE_URL unset)' }, async () => {
  const q = new URLSearchParams({ ws: env.WSS_URL, uri: env.SIP_URI });
  const resp = await page.goto(`${base}/console/phone.html?${q}`);
  const csp = resp.headers()['content-security-policy'] ?? '';
  assert.match(csp, /connect-src 'self' wss:/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(await page.locator('#ws').inputValue(), env.WSS_URL);
  // JsSIP's own log, printed if the test fails.
  await page.evaluate(() => window.JsSIP.debug.enable('JsSIP:*'));
  await page.getByLabel('Password').fill(env.SIP_PASSWORD);
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await waitState('#reg-state', 'registered');
  await shot('phone-registered');

  const placed = await api('POST', '/v1/calls', { user_id: env.USER_ID, dial_string: env.DIAL_STRING });
  assert.equal(placed.status, 202, JSON.stringify(placed.json));
  const callId = placed.json.call_id;
  await waitState('#call-state', 'ringing');
  await shot('phone-ringing');
  await page.getByRole('button', { name: 'Answer', exact: true }).click();
  await waitState('#call-state', 'in-call');

  // Audio both ways: the browser sends (the fake microphone) and receives (the carrier's
  // echo and recording, through the relay).
  let stats = null;
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    stats = await page.evaluate(() => window.phoneStats());
    if (stats && stats.packetsSent >= 100 && stats.packetsReceived >= 100) break;
    await page.waitForTimeout(250);
  }
  await shot('phone-in-call');
  assert.ok(stats && stats.packetsSent >= 100 && stats.packetsReceived >= 100, `browser media: ${JSON.stringify(stats)}`);
  assert.match(stats.codec ?? '', /audio\/(PCMU|PCMA)/i, 'G.711 end to end');
  const live = await api('GET', `/v1/calls/${callId}`);
  assert.equal(live.json.status, 'in-progress', JSON.stringify(live.json));

  const hung = await api('POST', `/v1/calls/${callId}/hangup`, {});
  assert.ok([200, 202].includes(hung.status), JSON.stringify(hung.json));
  await waitState('#call-state', 'ended');
  await shot('phone-ended');
  assert.deepEqual(problems, []);
  console.log(`PHONE_RESULT ${JSON.stringify({ call_id: callId, browser: stats })}`);

  if (!env.DIAL_OUT) return;
  // The browser calls a number itself: its offer is WebRTC's, the carrier gets plain RTP.
  await page.locator('#number').fill(env.DIAL_OUT);
  await page.getByRole('button', { name: 'Call', exact: true }).click();
  await waitState('#call-state', 'in-call');
  let out = null;
  const until = Date.now() + 20000;
  while (Date.now() < until) {
    out = await page.evaluate(() => window.phoneStats());
    if (out && out.packetsSent >= 100 && out.packetsReceived >= 100) break;
    await page.waitForTimeout(250);
  }
  await shot('phone-outgoing');
  assert.ok(out && out.packetsSent >= 100 && out.packetsReceived >= 100, `browser media (outgoing call): ${JSON.stringify(out)}`);
  await page.getByRole('button', { name: 'Hang up', exact: true }).click();
  await waitState('#call-state', 'ended');
  assert.deepEqual(problems, []);
  console.log(`PHONE_OUT_RESULT ${JSON.stringify({ browser: out })}`);
});
