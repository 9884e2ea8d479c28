// The SDK against a real `dialbridge serve` (see server.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  loadDialbridge,
  DialbridgeError,
  PermissionError,
  NotFoundError,
  InvalidRequestError,
  AuthenticationError,
  SseParser,
} from '../dist/index.js';
import { startServer, backend, PK, ALICE, CAROL } from './server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

/** A backend endpoint as an application would write it: a client secret for `user`. */
function secretsFor(user, counter = { n: 0, sessions: [] }) {
  const fetchClientSecret = async () => {
    counter.n += 1;
    const r = await backend(server.base, 'POST', '/v1/client_sessions', { user_id: user });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    counter.sessions.push(r.body);
    return r.body;
  };
  return { fetchClientSecret, counter };
}

const FINAL = new Set(['completed', 'busy', 'no-answer', 'failed', 'canceled']);

/** Resolves with the statuses seen for `callId` once one is final (bounded). */
function statusesUntilFinal(db, callIdPromise) {
  return new Promise((resolve, reject) => {
    const seen = [];
    const pending = [];
    let callId;
    const timer = setTimeout(() => reject(new Error(`no final status; saw ${seen.join(',')}`)), 20_000);
    const off = db.on('call.status', (ev) => {
      if (!callId) {
        pending.push(ev);
        return;
      }
      if (ev.callId !== callId) return;
      seen.push(ev.status);
      if (FINAL.has(ev.status)) {
        clearTimeout(timer);
        off();
        resolve(seen);
      }
    });
    callIdPromise.then((id) => {
      callId = id;
      for (const ev of pending.splice(0)) {
        if (ev.callId === id) seen.push(ev.status);
      }
      if (seen.some((s) => FINAL.has(s))) {
        clearTimeout(timer);
        off();
        resolve(seen);
      }
    }, reject);
  });
}

function opened(db) {
  return new Promise((resolve) => {
    const off = db.on('open', () => {
      off();
      resolve();
    });
  });
}

test('the SSE parser splits events, keeps ids and skips comments', () => {
  const p = new SseParser();
  assert.deepEqual(p.push(': keep-alive\n\nid: 7\nevent: ringing\ndata: {"a":'), []);
  assert.deepEqual(p.push('1}\n\r\nid: 8\r\ndata: x\ndata: y\n\n'), [
    { id: '7', event: 'ringing', data: '{"a":1}' },
    { id: '8', event: 'message', data: 'x\ny' },
  ]);
});

test('loadDialbridge checks the key and fetches one client secret', async () => {
  await assert.rejects(
    loadDialbridge('sk_test_sdk_1', { apiBase: server.base, fetchClientSecret: async () => 'cs_x' }),
    (e) => e instanceof DialbridgeError && e.code === 'publishable_key_invalid',
  );
  await assert.rejects(
    loadDialbridge(PK, { apiBase: server.base, fetchClientSecret: async () => ({ nope: 1 }) }),
    (e) => e instanceof DialbridgeError && e.code === 'client_secret_unavailable',
  );
  const { fetchClientSecret, counter } = secretsFor(ALICE);
  const db = await loadDialbridge(PK, { apiBase: server.base, fetchClientSecret });
  assert.equal(counter.n, 1);
  const list = await db.calls.list();
  assert.ok(Array.isArray(list.data));
  assert.equal(counter.n, 1, 'a live secret is reused');
});

test('a call placed through the SDK is watched to its end over the event stream', async () => {
  const { fetchClientSecret } = secretsFor(ALICE);
  const db = await loadDialbridge(PK, { apiBase: server.base, fetchClientSecret });
  await opened(db);
  const created = db.calls.create({ dialString: '+14155550100', metadata: { crm: 'ticket-1' } });
  const statuses = statusesUntilFinal(db, created.then((c) => c.call_id));
  const call = await created;
  assert.match(call.call_id, /^call_/);
  assert.equal(call.user_id, ALICE);
  const seen = await statuses;
  // No device of Alice is registered: the agent leg fails at once.
  assert.equal(seen.at(-1), 'failed', seen.join(','));
  const got = await db.calls.retrieve(call.call_id);
  assert.equal(got.status, 'failed');
  assert.deepEqual(got.metadata, { crm: 'ticket-1' });
  assert.ok(Array.isArray(got.timeline) && got.timeline.length > 0);
  // Hanging up an ended call is a typed error with the API's code.
  await assert.rejects(db.calls.hangup(call.call_id), (e) => {
    assert.ok(e instanceof DialbridgeError);
    assert.equal(e.code, 'call_ended');
    assert.equal(e.status, 409);
    return true;
  });
  db.close();
});

test("calls.create() fills user_id from the session's user, or needs userId", async () => {
  // The backend's answer as it came names the user: the call is Alice's.
  const { fetchClientSecret } = secretsFor(ALICE);
  const db = await loadDialbridge(PK, { apiBase: server.base, fetchClientSecret });
  const call = await db.calls.create({ dialString: '+14155550103' });
  assert.equal(call.user_id, ALICE);
  db.close();
  // A bare secret names no user: the API's missing_user_id, unless userId is given.
  const bare = secretsFor(ALICE);
  const db2 = await loadDialbridge(PK, {
    apiBase: server.base,
    fetchClientSecret: async () => (await bare.fetchClientSecret()).client_secret,
  });
  await assert.rejects(db2.calls.create({ dialString: '+14155550104' }), (e) => {
    assert.ok(e instanceof InvalidRequestError, String(e));
    assert.equal(e.code, 'missing_user_id');
    assert.equal(e.status, 400);
    return true;
  });
  const own = await db2.calls.create({ userId: ALICE, dialString: '+14155550104' });
  assert.equal(own.user_id, ALICE);
  db2.close();
});

test("a client secret cannot reach another user's calls", async () => {
  const { fetchClientSecret } = secretsFor(ALICE);
  const db = await loadDialbridge(PK, { apiBase: server.base, fetchClientSecret });
  const theirs = await backend(server.base, 'POST', '/v1/calls', {
    user_id: CAROL,
    dial_string: '+14155550101',
  });
  assert.equal(theirs.status, 202);
  await assert.rejects(db.calls.retrieve(theirs.body.call_id), (e) => {
    assert.ok(e instanceof NotFoundError, String(e));
    assert.equal(e.code, 'call_not_found');
    return true;
  });
  await assert.rejects(db.calls.hangup(theirs.body.call_id), NotFoundError);
  await assert.rejects(db.calls.create({ userId: CAROL, dialString: '+14155550102' }), (e) => {
    assert.ok(e instanceof PermissionError);
    assert.equal(e.code, 'user_not_allowed');
    assert.equal(e.status, 403);
    return true;
  });
  const mine = await db.calls.list();
  assert.ok(mine.data.every((c) => c.user_id === ALICE), JSON.stringify(mine.data));
  await assert.rejects(db.calls.create({ dialString: 'not a number' }), (e) => {
    assert.ok(e instanceof InvalidRequestError, String(e));
    assert.equal(e.status, 422);
    return true;
  });
});

test('a revoked or expiring secret is replaced by a fresh one from the backend', async () => {
  const { fetchClientSecret, counter } = secretsFor(ALICE);
  const db = await loadDialbridge(PK, { apiBase: server.base, fetchClientSecret });
  assert.equal(counter.n, 1);
  const r = await backend(server.base, 'DELETE', `/v1/client_sessions/${counter.sessions[0].id}`);
  assert.equal(r.status, 204);
  await db.calls.list();
  assert.equal(counter.n, 2, 'the revoked secret was replaced');

  // A secret that expires within the refresh margin is replaced before it is used.
  let n = 0;
  const soon = await loadDialbridge(PK, {
    apiBase: server.base,
    fetchClientSecret: async () => {
      n += 1;
      const s = await backend(server.base, 'POST', '/v1/client_sessions', { user_id: ALICE });
      return { client_secret: s.body.client_secret, expires_at: new Date(Date.now() + 5_000).toISOString() };
    },
  });
  await soon.calls.list();
  assert.equal(n, 2);

  // A backend that keeps handing out a dead secret: the error comes through, typed.
  const dead = await loadDialbridge(PK, {
    apiBase: server.base,
    fetchClientSecret: async () => 'cs_' + '0'.repeat(64),
  });
  await assert.rejects(dead.calls.list(), (e) => {
    assert.ok(e instanceof AuthenticationError);
    assert.equal(e.code, 'client_secret_invalid');
    return true;
  });
});

test('the event stream reconnects with Last-Event-ID and misses nothing', async () => {
  const { fetchClientSecret } = secretsFor(ALICE);
  const streams = [];
  // A fetch whose first event stream is cut after its first event.
  const cuttingFetch = async (url, init) => {
    const resp = await fetch(url, init);
    if (!String(url).endsWith('/v1/events')) return resp;
    const n = streams.push({ lastEventId: init.headers['Last-Event-ID'] });
    if (n > 1) return resp;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let cut = false;
    const body = new ReadableStream({
      async pull(controller) {
        if (cut) {
          reader.cancel();
          controller.close();
          return;
        }
        const { value, done } = await reader.read();
        if (done) return controller.close();
        text += decoder.decode(value, { stream: true });
        // Pass on everything up to the end of the first event that has an id, then end.
        let at = 0;
        for (;;) {
          const end = text.indexOf('\n\n', at);
          if (end < 0) break;
          const block = text.slice(at, end);
          at = end + 2;
          if (/(^|\n)id:/.test(block)) {
            cut = true;
            break;
          }
        }
        if (cut) {
          controller.enqueue(new TextEncoder().encode(text.slice(0, at)));
        } else {
          controller.enqueue(new TextEncoder().encode(text.slice(0, at)));
          text = text.slice(at);
        }
      },
    });
    return new Response(body, { status: resp.status, headers: resp.headers });
  };
  const db = await loadDialbridge(PK, {
    apiBase: server.base,
    fetchClientSecret,
    fetch: cuttingFetch,
    reconnectDelayMs: { first: 50, max: 200 },
  });
  const events = [];
  db.on('call.event', (ev) => events.push(ev));
  await opened(db);
  const created = db.calls.create({ dialString: '+14155550103' });
  const seen = await statusesUntilFinal(db, created.then((c) => c.call_id));
  assert.equal(seen.at(-1), 'failed');
  assert.ok(streams.length >= 2, `reconnected: ${JSON.stringify(streams)}`);
  assert.equal(streams[0].lastEventId, undefined);
  assert.match(String(streams[1].lastEventId), /^\d+$/, 'the second stream resumed');
  const ids = events.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, 'no event twice');
  const numeric = ids.map(Number);
  assert.deepEqual([...numeric].sort((a, b) => a - b), numeric, 'in order');
  db.close();
});

test('dist/ is the build of src/', { skip: !existsSync(join(here, '..', 'node_modules', 'typescript')) && 'npm ci first' }, () => {
  const out = mkdtempSync(join(tmpdir(), 'dialbridge-sdk-build-'));
  try {
    execFileSync(
      process.execPath,
      [join(here, '..', 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(here, '..', 'tsconfig.json'), '--outDir', out],
      { stdio: 'inherit' },
    );
    for (const f of ['index.js', 'index.d.ts']) {
      assert.equal(
        readFileSync(join(out, f), 'utf8'),
        readFileSync(join(here, '..', 'dist', f), 'utf8'),
        `dist/${f} is stale: run npm run build in sdk/js`,
      );
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
