// dialbridge console: live calls, the call log, each call's SIP ladder, registrations,
// callback deliveries, and a Call button that goes through the SDK.
//
// Everything that comes from the network is put on the page as text (textContent, text
// nodes, attribute values): no HTML is ever parsed from data. The secret key is kept in
// sessionStorage only (gone with the tab).

import { loadDialbridge, EventStream, errorFromResponse } from '/console/sdk.js';

const KEY = 'dialbridge.secret_key';
const FINAL = new Set(['completed', 'busy', 'no-answer', 'failed', 'canceled']);
const STATUSES = ['queued', 'ringing', 'in-progress', 'completed', 'busy', 'no-answer', 'failed', 'canceled'];
const origin = window.location.origin;

// ----- DOM helpers --------------------------------------------------------------------

/** An element; string children become text nodes. Attributes are set as values only. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'text') el.textContent = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);
const main = () => $('#main');

/** Replaces the view's content; arrays are flattened, null and false left out. */
function setMain(...nodes) {
  main().replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function announce(text) {
  const s = $('#status');
  s.textContent = '';
  s.textContent = text;
}

function statusBadge(status) {
  const s = String(status ?? '');
  return h('span', { class: `status ${STATUSES.includes(s) || ['delivered', 'pending', 'abandoned'].includes(s) ? s : ''}` }, s || '—');
}

function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function fmtClock(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
}

function fmtDuration(secs) {
  const n = Math.max(0, Math.floor(Number(secs) || 0));
  const m = Math.floor(n / 60);
  return `${m}:${String(n % 60).padStart(2, '0')}`;
}

function callLink(id) {
  return h('a', { href: `#/calls/${encodeURIComponent(id)}`, class: 'mono' }, id);
}

// ----- API ----------------------------------------------------------------------------

const session = {
  key: sessionStorage.getItem(KEY),
  account: null,
  users: [],
  stream: null,
  sdk: new Map(),
};

class SignedOut extends Error {}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.key}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(origin + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (resp.status === 401) {
    signOut('The secret key was refused.');
    throw new SignedOut();
  }
  if (!resp.ok) throw errorFromResponse(resp.status, json);
  return json;
}

function userName(id) {
  const u = session.users.find((x) => x.id === id);
  return u ? `${u.name} (${u.extension ?? '—'})` : id ?? '—';
}

// ----- sign in / out --------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  session.key = null;
  session.account = null;
  session.stream?.close();
  session.stream = null;
  for (const db of session.sdk.values()) db.close();
  session.sdk.clear();
  live.calls.clear();
  live.feed.length = 0;
  $('#nav').hidden = true;
  $('#who').replaceChildren();
  renderSignIn(message);
}

function renderSignIn(message) {
  const input = h('input', {
    id: 'secret-key', type: 'password', name: 'secret_key', autocomplete: 'off',
    required: true, spellcheck: 'false', placeholder: 'sk_…',
  });
  const err = h('p', { class: 'error', role: 'alert' }, message || '');
  const form = h('form', {
    class: 'panel', 'aria-labelledby': 'signin-title',
    on: {
      submit: async (e) => {
        e.preventDefault();
        err.textContent = '';
        session.key = input.value.trim();
        try {
          await start();
          sessionStorage.setItem(KEY, session.key);
          route();
        } catch (x) {
          if (!(x instanceof SignedOut)) err.textContent = String(x.message || x);
          session.key = null;
        }
      },
    },
  },
  h('h1', { id: 'signin-title' }, 'Sign in'),
  h('p', { class: 'muted' }, 'With a secret key of your account (from [[accounts]] api_keys, or the keys ',
    h('code', {}, 'dialbridge serve'), ' printed when it created the development account). It is kept in this tab only.'),
  h('label', { for: 'secret-key' }, 'Secret key', input),
  h('p', {}, h('button', { type: 'submit' }, 'Sign in')),
  err);
  setMain(form);
  input.focus();
}

async function start() {
  session.account = await api('GET', '/v1/account');
  session.users = (await api('GET', '/v1/users')).data ?? [];
  const nav = $('#nav');
  nav.replaceChildren(
    ...[['#/live', 'Live calls'], ['#/calls', 'Call log'], ['#/registrations', 'Registrations']].map(([href, text]) =>
      h('a', { href }, text)),
  );
  nav.hidden = false;
  $('#who').replaceChildren(
    h('span', {}, session.account.name, ' · ', h('span', { class: 'mono' }, session.account.id)),
    h('button', { type: 'button', on: { click: () => signOut('Signed out.') } }, 'Sign out'),
  );
  openStream();
}

// ----- the live stream ------------------------------------------------------------------

const live = {
  calls: new Map(), // call_id -> call (as listed) with live status
  feed: [],
  listeners: new Set(),
};

function openStream() {
  session.stream?.close();
  session.stream = new EventStream({
    fetch: (u, i) => fetch(u, i),
    apiBase: origin,
    credentials: {
      headers: async () => ({ Authorization: `Bearer ${session.key}` }),
      refresh: async () => false,
    },
    onMessage: (msg) => {
      let data;
      try {
        data = JSON.parse(msg.data);
      } catch {
        return;
      }
      onLiveEvent(msg.event, data);
    },
    onError: () => {},
  });
}

async function onLiveEvent(type, data) {
  const id = data.call_id;
  if (typeof id !== 'string') return;
  live.feed.unshift({ type, data });
  live.feed.length = Math.min(live.feed.length, 200);
  let call = live.calls.get(id);
  if (!call) {
    call = { call_id: id, status: data.status, user_id: data.user_id };
    live.calls.set(id, call);
    api('GET', `/v1/calls/${encodeURIComponent(id)}`).then((full) => {
      // What the stream told since the request went out is newer than the answer.
      const seen = { status: call.status, answered_at: call.answered_at, ended_at: call.ended_at, duration: call.duration, liveLegs: call.liveLegs };
      Object.assign(call, full);
      for (const [k, v] of Object.entries(seen)) if (v !== undefined && v !== null) call[k] = v;
      notify(id);
    }, () => {});
  }
  if (typeof data.status === 'string') {
    if (call.status !== data.status) announce(`Call ${id}: ${data.status}`);
    call.status = data.status;
  }
  const legs = (call.liveLegs ??= {});
  if (type === 'sip' && (data.leg === 'agent' || data.leg === 'customer') && !legs[data.leg]) legs[data.leg] = 'calling';
  if (type === 'ringing' && data.leg && legs[data.leg] !== 'answered') legs[data.leg] = 'ringing';
  if (type === 'agent_answered') legs.agent = 'answered';
  if (type === 'in_progress') legs.customer = 'answered';
  if (type === 'ended') for (const l of Object.keys(legs)) legs[l] = 'ended';
  if (type === 'in_progress') {
    if (!call.answered_at) call.answered_at = data.at;
    // The browser's own clock runs the duration (the server's may differ from it).
    call.answeredLocalMs ??= Date.now();
  }
  if (FINAL.has(call.status) && !call.ended_at) call.ended_at = data.at;
  if (type === 'ended' && data.detail && typeof data.detail.duration === 'number') call.duration = data.detail.duration;
  notify(id);
}

function notify(id) {
  for (const fn of live.listeners) fn(id);
}

function liveDuration(c) {
  if (FINAL.has(c.status)) return typeof c.duration === 'number' ? c.duration : null;
  if (c.answeredLocalMs) return (Date.now() - c.answeredLocalMs) / 1000;
  if (!c.answered_at) return null;
  return Math.max(0, (Date.now() - Date.parse(c.answered_at)) / 1000);
}

// ----- views ----------------------------------------------------------------------------

let cleanup = [];
function onLeave(fn) {
  cleanup.push(fn);
}

function userSelect(id, withAll) {
  return h('select', { id, name: id },
    withAll ? h('option', { value: '' }, 'All users') : null,
    session.users.map((u) => h('option', { value: u.id }, `${u.name} (${u.extension ?? '—'})`)));
}

/** The SDK loaded for one user, with client secrets made through this console's key. */
async function sdkFor(userId) {
  let db = session.sdk.get(userId);
  if (db) return db;
  let keys = (await api('GET', '/v1/publishable_keys')).data ?? [];
  if (keys.length === 0) keys = [await api('POST', '/v1/publishable_keys')];
  db = await loadDialbridge(keys[0].key, {
    apiBase: origin,
    fetchClientSecret: () => api('POST', '/v1/client_sessions', { user_id: userId }),
  });
  session.sdk.set(userId, db);
  return db;
}

function callForm() {
  const user = userSelect('call-user', false);
  const number = h('input', { id: 'call-number', name: 'dial_string', required: true, placeholder: '+14155550100', autocomplete: 'off' });
  const callback = h('input', { id: 'call-callback', name: 'callback_url', type: 'url', placeholder: 'https://… (optional)', autocomplete: 'off' });
  const out = h('p', { id: 'call-result', role: 'status' });
  const button = h('button', { type: 'submit', id: 'call-button' }, 'Call');
  const form = h('form', {
    class: 'inline', 'aria-label': 'Place a call',
    on: {
      submit: async (e) => {
        e.preventDefault();
        out.replaceChildren();
        button.disabled = true;
        try {
          const db = await sdkFor(user.value);
          const params = { userId: user.value, dialString: number.value.trim() };
          if (callback.value.trim()) params.callbackUrl = callback.value.trim();
          const call = await db.calls.create(params);
          out.replaceChildren('Placed ', callLink(call.call_id), ' ', statusBadge(call.status));
          const off = db.on('call.status', (ev) => {
            if (ev.callId !== call.call_id) return;
            out.replaceChildren('Call ', callLink(call.call_id), ' ', statusBadge(ev.status));
            if (FINAL.has(ev.status)) off();
          });
        } catch (x) {
          if (!(x instanceof SignedOut)) out.replaceChildren(h('span', { class: 'error' }, `${x.code ? `${x.code}: ` : ''}${x.message || x}`));
        } finally {
          button.disabled = false;
        }
      },
    },
  },
  h('label', { for: 'call-user' }, 'Agent (rings first)', user),
  h('label', { for: 'call-number' }, 'Customer number', number),
  h('label', { for: 'call-callback' }, 'Callback URL', callback),
  button);
  return h('section', { class: 'panel', 'aria-labelledby': 'call-title' }, h('h2', { id: 'call-title' }, 'Place a call'), form, out);
}

function renderLive() {
  const tbody = h('tbody', { id: 'live-calls' });
  const feed = h('ul', { class: 'feed', id: 'live-feed', 'aria-label': 'Recent events' });
  const draw = () => {
    const calls = [...live.calls.values()].sort((a, b) => String(b.call_id).localeCompare(String(a.call_id)));
    tbody.replaceChildren(...(calls.length === 0
      ? [h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'No calls since the console opened. Place one above, or through the API.'))]
      : calls.map((c) => {
        const legs = c.liveLegs ?? {};
        const legText = ['agent', 'customer'].map((l) => (legs[l] ? `${l}: ${legs[l]}` : null)).filter(Boolean).join(' · ');
        const d = liveDuration(c);
        return h('tr', { class: FINAL.has(c.status) ? 'final' : '', 'data-call-id': c.call_id },
          h('td', {}, callLink(c.call_id)),
          h('td', {}, userName(c.user_id)),
          h('td', { class: 'mono' }, c.destination ?? c.dial_string ?? '…'),
          h('td', { class: 'call-status' }, statusBadge(c.status)),
          h('td', {}, legText || '—'),
          h('td', { class: 'num' }, d === null ? '—' : fmtDuration(d)),
          h('td', {}, fmtClock(c.created_at)));
      })));
    feed.replaceChildren(...live.feed.slice(0, 50).map(({ type, data }) =>
      h('li', {}, h('span', { class: 'mono' }, fmtClock(data.at)), ' ', h('strong', {}, type), ' ',
        h('span', { class: 'mono' }, data.call_id), ' ', data.leg ? `[${data.leg}] ` : '',
        data.detail && data.detail.summary ? data.detail.summary : '')));
  };
  // Calls already running when the console opens.
  Promise.all(['queued', 'ringing', 'in-progress'].map((s) => api('GET', `/v1/calls?status=${s}&limit=100`)))
    .then((pages) => {
      for (const p of pages) for (const c of p.data ?? []) if (!live.calls.has(c.call_id)) live.calls.set(c.call_id, c);
      draw();
    }, () => {});
  live.listeners.add(draw);
  const tick = setInterval(draw, 1000);
  onLeave(() => {
    live.listeners.delete(draw);
    clearInterval(tick);
  });
  draw();
  setMain(
    h('h1', {}, 'Live calls'),
    callForm(),
    h('div', { class: 'cols live' },
      h('section', { 'aria-labelledby': 'live-title' },
        h('h2', { id: 'live-title' }, 'Calls'),
        h('div', { class: 'scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, ['Call', 'Agent', 'Customer', 'Status', 'Legs', 'Duration', 'Created'].map((t) => h('th', { scope: 'col' }, t)))),
          tbody))),
      h('section', { 'aria-labelledby': 'feed-title' }, h('h2', { id: 'feed-title' }, 'Events'), feed)),
  );
}

function renderLog(params) {
  const status = h('select', { id: 'f-status', name: 'status' }, h('option', { value: '' }, 'Any status'), STATUSES.map((s) => h('option', { value: s }, s)));
  const user = userSelect('f-user', true);
  const since = h('input', { id: 'f-since', type: 'datetime-local', name: 'since' });
  const until = h('input', { id: 'f-until', type: 'datetime-local', name: 'until' });
  const limit = h('select', { id: 'f-limit', name: 'limit' }, ['10', '20', '50', '100'].map((n) => h('option', { value: n }, n)));
  status.value = params.get('status') ?? '';
  user.value = params.get('user_id') ?? '';
  limit.value = params.get('limit') ?? '20';
  const toLocal = (iso) => (iso ? new Date(iso).toISOString().slice(0, 16) : '');
  since.value = toLocal(params.get('since'));
  until.value = toLocal(params.get('until'));
  const tbody = h('tbody', { id: 'log-rows' });
  const pager = h('div', { class: 'pager' });
  const err = h('p', { class: 'error', role: 'alert' });
  const cursors = [];
  const load = async (cursor) => {
    const q = new URLSearchParams();
    if (status.value) q.set('status', status.value);
    if (user.value) q.set('user_id', user.value);
    if (since.value) q.set('since', new Date(since.value).toISOString());
    if (until.value) q.set('until', new Date(until.value).toISOString());
    q.set('limit', limit.value);
    if (cursor) q.set('cursor', cursor);
    err.textContent = '';
    let page;
    try {
      page = await api('GET', `/v1/calls?${q}`);
    } catch (x) {
      if (!(x instanceof SignedOut)) err.textContent = x.message || String(x);
      return;
    }
    const rows = page.data ?? [];
    tbody.replaceChildren(...(rows.length === 0
      ? [h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No calls match.'))]
      : rows.map((c) => h('tr', { 'data-call-id': c.call_id },
        h('td', {}, fmtTime(c.created_at)),
        h('td', {}, callLink(c.call_id)),
        h('td', {}, userName(c.user_id)),
        h('td', { class: 'mono' }, c.destination ?? c.dial_string),
        h('td', {}, statusBadge(c.status)),
        h('td', { class: 'num' }, fmtDuration(c.duration)),
        h('td', {}, c.end_leg ?? '—'),
        h('td', { class: 'num' }, c.sip_code ?? '—')))));
    const newer = h('button', { type: 'button', class: 'secondary', disabled: cursors.length === 0,
      on: { click: () => { cursors.pop(); load(cursors[cursors.length - 1]); } } }, '← Newer');
    const older = h('button', { type: 'button', class: 'secondary', disabled: !page.next_cursor,
      on: { click: () => { cursors.push(page.next_cursor); load(page.next_cursor); } } }, 'Older →');
    pager.replaceChildren(newer, h('span', { class: 'muted' }, `Page ${cursors.length + 1}`), older);
  };
  const form = h('form', {
    class: 'inline panel', 'aria-label': 'Filter the call log',
    on: { submit: (e) => { e.preventDefault(); cursors.length = 0; load(); } },
  },
  h('label', { for: 'f-status' }, 'Status', status),
  h('label', { for: 'f-user' }, 'Agent', user),
  h('label', { for: 'f-since' }, 'Since', since),
  h('label', { for: 'f-until' }, 'Until', until),
  h('label', { for: 'f-limit' }, 'Per page', limit),
  h('button', { type: 'submit' }, 'Apply'));
  setMain(
    h('h1', {}, 'Call log'), form, err,
    h('table', {},
      h('thead', {}, h('tr', {}, ['Created', 'Call', 'Agent', 'Customer', 'Status', 'Duration', 'Ended by', 'SIP'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody),
    pager);
  load();
}

/** One timeline entry as a row of the ladder. */
function ladderRow(e, t0) {
  const at = Date.parse(e.at);
  const rel = Number.isFinite(at) && Number.isFinite(t0) ? `+${((at - t0) / 1000).toFixed(3)} s` : '';
  const detail = e.detail && typeof e.detail === 'object' ? e.detail : {};
  const cells = {
    time: h('div', { class: 'cell time', title: String(e.at ?? '') }, rel),
    agent: h('div', { class: 'cell pole' }),
    laneA: h('div', { class: 'cell' }),
    db: h('div', { class: 'cell pole' }),
    laneC: h('div', { class: 'cell' }),
    customer: h('div', { class: 'cell pole' }),
  };
  if (e.kind === 'sip' && (e.leg === 'agent' || e.leg === 'customer')) {
    const summary = String(detail.summary ?? '');
    const sent = detail.direction === 'sent';
    // Agent lane: sent goes left (to the agent), received goes right. Customer lane: the mirror.
    const dir = e.leg === 'agent' ? (sent ? 'left' : 'right') : (sent ? 'right' : 'left');
    const code = /^(\d{3})\b/.exec(summary);
    const kind = code ? (Number(code[1]) >= 300 ? 'error' : 'response') : 'request';
    const msg = h('div', { class: `cell msg ${dir} ${kind}`, title: `${detail.sip_call_id ?? ''}` },
      h('span', { class: 'label' }, summary), h('span', { class: 'line', 'aria-hidden': 'true' }));
    msg.setAttribute('aria-label', `${e.leg} leg, ${sent ? 'sent' : 'received'}: ${summary}`);
    if (e.leg === 'agent') cells.laneA = msg;
    else cells.laneC = msg;
  } else {
    let text;
    let cls = 'note';
    if (e.kind === 'callback') {
      cls += ' callback';
      text = `callback ${detail.status ?? ''} #${detail.sequence ?? '?'}: ${detail.result ?? ''}${detail.http_status ? ` (${detail.http_status})` : ''}${detail.attempt ? `, attempt ${detail.attempt}` : ''}${detail.error ? ` — ${detail.error}` : ''}`;
    } else if (e.kind === 'api.request') {
      text = `API ${detail.endpoint ?? 'request'}`;
    } else if (e.kind === 'note') {
      text = String(detail.text ?? 'note');
    } else if (e.kind === 'ended') {
      cls += ' state';
      text = `ended: ${detail.status ?? ''}${detail.reason ? ` (${detail.reason})` : ''}`;
    } else {
      cls += ' state';
      text = `${e.kind}${detail.sip_code ? ` ${detail.sip_code}` : ''}${e.leg ? ` [${e.leg}]` : ''}`;
    }
    cells.db = h('div', { class: 'cell pole' }, h('div', { class: cls }, text));
  }
  return [cells.time, cells.agent, cells.laneA, cells.db, cells.laneC, cells.customer];
}

function renderLadder(timeline) {
  const t0 = timeline.length ? Date.parse(timeline[0].at) : NaN;
  return h('div', { class: 'ladder', id: 'ladder', role: 'figure', 'aria-label': 'SIP ladder of the call' },
    h('div', { class: 'head' }, 'time'),
    h('div', { class: 'head' }, 'Agent leg'),
    h('div', { class: 'head' }),
    h('div', { class: 'head' }, 'dialbridge'),
    h('div', { class: 'head' }),
    h('div', { class: 'head' }, 'Customer leg'),
    timeline.map((e) => ladderRow(e, t0)));
}

async function renderCall(id) {
  setMain(h('h1', {}, 'Call ', h('span', { class: 'mono' }, id)), h('p', { class: 'muted' }, 'Loading…'));
  let timer;
  const draw = async () => {
    let c;
    try {
      c = await api('GET', `/v1/calls/${encodeURIComponent(id)}`);
    } catch (x) {
      if (!(x instanceof SignedOut)) setMain(h('h1', {}, 'Call'), h('p', { class: 'error', role: 'alert' }, x.message || String(x)));
      return;
    }
    const legs = c.legs && typeof c.legs === 'object' ? c.legs : {};
    const stats = c.stats && typeof c.stats === 'object' ? c.stats : {};
    const o = c.outcome && typeof c.outcome === 'object' ? c.outcome : null;
    const facts = [
      ['Status', statusBadge(c.status)],
      ['Agent', userName(c.user_id)],
      ['Customer', `${c.dial_string ?? ''}${c.destination && c.destination !== c.dial_string ? ` → ${c.destination}` : ''}`],
      ['Caller ID', c.caller_id ?? '—'],
      ['Created', fmtTime(c.created_at)],
      ['Answered', fmtTime(c.answered_at)],
      ['Ended', fmtTime(c.ended_at)],
      ['Duration', fmtDuration(c.duration)],
      ['Outcome', o ? `${o.status ?? ''}${o.leg ? ` on the ${o.leg} leg` : ''}${o.sip_code ? `, SIP ${o.sip_code}` : ''}${o.reason ? ` — ${o.reason}` : ''}` : '—'],
      ['Callback URL', c.callback_url ?? '—'],
      ['Metadata', JSON.stringify(c.metadata ?? {})],
    ];
    const legRows = ['agent', 'customer'].map((l) => {
      const leg = legs[l] && typeof legs[l] === 'object' ? legs[l] : {};
      const st = stats[l] && typeof stats[l] === 'object' ? stats[l] : {};
      return h('tr', {},
        h('th', { scope: 'row' }, l),
        h('td', { class: 'mono', title: leg.sip_call_id ?? '' }, leg.sip_call_id ? String(leg.sip_call_id).split('@')[0] : '—'),
        h('td', {}, fmtClock(leg.ringing_at)),
        h('td', {}, fmtClock(leg.answered_at)),
        h('td', { class: 'num' }, st.rx_packets ?? '—'),
        h('td', { class: 'num' }, st.tx_packets ?? '—'));
    });
    const callbacks = Array.isArray(c.callbacks) ? c.callbacks : [];
    const timeline = Array.isArray(c.timeline) ? c.timeline : [];
    const actions = FINAL.has(c.status) ? null : h('p', {}, h('button', {
      type: 'button', class: 'secondary',
      on: { click: async () => { try { await api('POST', `/v1/calls/${encodeURIComponent(id)}/hangup`, {}); } catch (x) { announce(x.message || String(x)); } } },
    }, 'Hang up'));
    setMain(
      h('p', {}, h('a', { href: '#/calls' }, '← Call log')),
      h('h1', {}, 'Call ', h('span', { class: 'mono', id: 'call-id' }, c.call_id)),
      actions,
      h('div', { class: 'cols half' },
        h('section', { class: 'panel', 'aria-labelledby': 'facts-title' },
          h('h2', { id: 'facts-title' }, 'Summary'),
          h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
        h('section', { class: 'panel', 'aria-labelledby': 'legs-title' },
          h('h2', { id: 'legs-title' }, 'Legs'),
          h('table', {},
            h('thead', {}, h('tr', {}, ['Leg', 'SIP Call-ID', 'Ringing', 'Answered', 'RTP in', 'RTP out'].map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, legRows)))),
      h('section', { 'aria-labelledby': 'ladder-title' },
        h('h2', { id: 'ladder-title' }, 'SIP ladder'),
        timeline.length ? renderLadder(timeline) : h('p', { class: 'empty' }, 'No timeline yet.')),
      h('section', { 'aria-labelledby': 'cb-title' },
        h('h2', { id: 'cb-title' }, 'Callback deliveries'),
        callbacks.length === 0
          ? h('p', { class: 'empty' }, c.callback_url ? 'None yet.' : 'This call has no callback URL.')
          : h('table', { id: 'callbacks' },
            h('thead', {}, h('tr', {}, ['#', 'Status', 'Delivery', 'Attempts', 'Next attempt', 'Last error', 'Event'].map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, callbacks.map((cb) => h('tr', {},
              h('td', { class: 'num' }, cb.sequence ?? ''),
              h('td', {}, statusBadge(cb.status)),
              h('td', {}, statusBadge(cb.state)),
              h('td', { class: 'num' }, cb.attempts ?? 0),
              h('td', {}, cb.next_attempt_at ? fmtTime(cb.next_attempt_at) : '—'),
              h('td', {}, cb.last_error ?? '—'),
              h('td', { class: 'mono' }, cb.event_id ?? '')))))),
    );
    if (!FINAL.has(c.status)) {
      clearTimeout(timer);
      timer = setTimeout(draw, 1500);
    }
  };
  // Redraw at once when the call's events arrive.
  const onEvent = (callId) => {
    if (callId === id) {
      clearTimeout(timer);
      timer = setTimeout(draw, 100);
    }
  };
  live.listeners.add(onEvent);
  onLeave(() => {
    live.listeners.delete(onEvent);
    clearTimeout(timer);
  });
  await draw();
}

async function renderRegistrations() {
  setMain(h('h1', {}, 'Registrations'), h('p', { class: 'muted' }, 'Loading…'));
  session.users = (await api('GET', '/v1/users')).data ?? [];
  const sections = await Promise.all(session.users.map(async (u) => {
    let regs = [];
    try {
      regs = (await api('GET', `/v1/users/${encodeURIComponent(u.id)}/registrations`)).data ?? [];
    } catch (x) {
      if (x instanceof SignedOut) throw x;
    }
    const devices = Array.isArray(u.devices) ? u.devices : [];
    const rows = devices.flatMap((d) => {
      const mine = regs.filter((r) => r.device === d.username);
      if (mine.length === 0) {
        return [h('tr', {}, h('td', {}, d.username), h('td', { colspan: 5, class: 'muted' }, 'not registered'))];
      }
      return mine.map((r) => h('tr', {},
        h('td', {}, d.username),
        h('td', { class: 'mono' }, r.contact),
        h('td', { class: 'mono' }, `${r.transport ?? ''} ${r.source ?? ''}`),
        h('td', { class: 'num' }, `${r.expires_in ?? '?'} s`),
        h('td', {}, r.user_agent ?? '—'),
        h('td', {}, fmtTime(r.expires_at))));
    });
    return h('section', { class: 'panel', 'aria-label': `Registrations of ${u.name}` },
      h('h2', {}, u.name, ' ', h('span', { class: 'muted' }, `ext. ${u.extension ?? '—'} · `, h('span', { class: 'mono' }, u.id))),
      devices.length === 0 ? h('p', { class: 'empty' }, 'No devices.') :
        h('table', {},
          h('thead', {}, h('tr', {}, ['Device', 'Contact', 'Source', 'Expires in', 'User agent', 'Expires at'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, rows)));
  }));
  setMain(h('h1', {}, 'Registrations'),
    ...(sections.length ? sections : [h('p', { class: 'empty' }, 'No users.')]));
}

// ----- routing --------------------------------------------------------------------------

async function route() {
  for (const fn of cleanup.splice(0)) fn();
  if (!session.key) return renderSignIn();
  const hash = window.location.hash || '#/live';
  const [path, query] = hash.slice(1).split('?');
  const params = new URLSearchParams(query ?? '');
  for (const a of document.querySelectorAll('#nav a')) {
    const here = path === a.getAttribute('href').slice(1) || (path.startsWith('/calls/') && a.getAttribute('href') === '#/calls');
    if (here) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (path.startsWith('/calls/')) await renderCall(decodeURIComponent(path.slice('/calls/'.length)));
    else if (path === '/calls') renderLog(params);
    else if (path === '/registrations') await renderRegistrations();
    else renderLive();
  } catch (x) {
    if (!(x instanceof SignedOut)) setMain(h('p', { class: 'error', role: 'alert' }, x.message || String(x)));
  }
  main().focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);

(async () => {
  if (session.key) {
    try {
      await start();
    } catch (x) {
      if (!(x instanceof SignedOut)) signOut(x.message || String(x));
      return;
    }
  }
  route();
})();
