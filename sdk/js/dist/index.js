/**
 * @dialbridge/sdk — dialbridge in the browser.
 *
 * A page is loaded with a publishable key (`pk_…`, public) and a function that asks the
 * application's backend for a client secret (`cs_…`), which the backend makes with its secret
 * key (`POST /v1/client_sessions {"user_id"}`). The client secret lets the page place, watch and
 * hang up the calls of that one user, and nothing else.
 *
 * ```js
 * import { loadDialbridge } from '@dialbridge/sdk';
 * const db = await loadDialbridge('pk_live_…', {
 *   fetchClientSecret: async () => (await fetch('/dialbridge/session', { method: 'POST' })).json(),
 * });
 * const call = await db.calls.create({ dialString: '+14155550100' });
 * db.on('call.status', (ev) => console.log(ev.callId, ev.status));
 * ```
 *
 * No runtime dependencies: it needs `fetch`, `ReadableStream` and `TextDecoder` (browsers,
 * Node.js 18+).
 */
/** A failure, with the API's `code` and HTTP `status` (0 when no answer came). */
export class DialbridgeError extends Error {
    constructor(code, message, status, retryAfter) {
        super(message);
        this.name = 'DialbridgeError';
        this.code = code;
        this.status = status;
        this.retryAfter = retryAfter;
    }
}
/** A 401: the credentials were refused even after a fresh client secret. */
export class AuthenticationError extends DialbridgeError {
    constructor(code, message, status) {
        super(code, message, status);
        this.name = 'AuthenticationError';
    }
}
/** A 403: the client secret does not reach this (another user, an admin route). */
export class PermissionError extends DialbridgeError {
    constructor(code, message, status) {
        super(code, message, status);
        this.name = 'PermissionError';
    }
}
/** A 400 or 422: the request itself is wrong (missing field, undialable number). */
export class InvalidRequestError extends DialbridgeError {
    constructor(code, message, status) {
        super(code, message, status);
        this.name = 'InvalidRequestError';
    }
}
/** A 404: no such call (or one of another user). */
export class NotFoundError extends DialbridgeError {
    constructor(code, message, status) {
        super(code, message, status);
        this.name = 'NotFoundError';
    }
}
/** A 429 or 503: try again after `retryAfter` seconds. */
export class RateLimitError extends DialbridgeError {
    constructor(code, message, status, retryAfter) {
        super(code, message, status, retryAfter);
        this.name = 'RateLimitError';
    }
}
/** The error for an API answer. */
export function errorFromResponse(status, body, retryAfter) {
    const err = body?.error;
    const code = typeof err?.code === 'string' ? err.code : `http_${status}`;
    const message = typeof err?.message === 'string' ? err.message : `HTTP ${status}`;
    if (status === 401)
        return new AuthenticationError(code, message, status);
    if (status === 403)
        return new PermissionError(code, message, status);
    if (status === 404)
        return new NotFoundError(code, message, status);
    if (status === 400 || status === 422)
        return new InvalidRequestError(code, message, status);
    if (status === 429 || status === 503)
        return new RateLimitError(code, message, status, retryAfter);
    return new DialbridgeError(code, message, status, retryAfter);
}
/** The request body for `calls.create`: only the fields given. */
export function callBody(p, userId) {
    const body = { dial_string: p.dialString };
    if (userId !== undefined)
        body.user_id = userId;
    if (p.callerId !== undefined)
        body.caller_id = p.callerId;
    if (p.callbackUrl !== undefined)
        body.callback_url = p.callbackUrl;
    if (p.ringTimeout !== undefined)
        body.ring_timeout = p.ringTimeout;
    if (p.metadata !== undefined)
        body.metadata = p.metadata;
    return body;
}
/** A JSON request to the API with `credentials`, retried once after a refresh on 401. */
export async function apiRequest(fetchFn, apiBase, credentials, method, path, body, extraHeaders = {}) {
    for (let attempt = 0;; attempt++) {
        const headers = {
            Accept: 'application/json',
            ...(await credentials.headers()),
            ...extraHeaders,
        };
        if (body !== undefined)
            headers['Content-Type'] = 'application/json';
        let resp;
        try {
            resp = await fetchFn(apiBase + path, {
                method,
                headers,
                body: body === undefined ? undefined : JSON.stringify(body),
            });
        }
        catch (e) {
            throw new DialbridgeError('network_error', `Cannot reach dialbridge: ${String(e)}`, 0);
        }
        const text = await resp.text();
        let json = null;
        if (text) {
            try {
                json = JSON.parse(text);
            }
            catch {
                if (resp.ok) {
                    throw new DialbridgeError('invalid_response', 'The answer is not JSON', resp.status);
                }
            }
        }
        if (resp.ok)
            return json;
        const err = errorFromResponse(resp.status, json, Number(resp.headers.get('retry-after')) || undefined);
        if (resp.status === 401 && attempt === 0 && (await credentials.refresh(err.code)))
            continue;
        throw err;
    }
}
/** Splits an SSE text stream into messages (fed chunk by chunk). */
export class SseParser {
    constructor() {
        this.buf = '';
        this.event = '';
        this.data = [];
    }
    /** Feeds text; returns the messages it completed. */
    push(chunk) {
        this.buf += chunk;
        const out = [];
        for (;;) {
            const nl = this.buf.search(/\r\n|\r|\n/);
            if (nl < 0)
                break;
            const line = this.buf.slice(0, nl);
            const eol = this.buf.startsWith('\r\n', nl) ? 2 : 1;
            this.buf = this.buf.slice(nl + eol);
            if (line === '') {
                if (this.data.length > 0 || this.event) {
                    out.push({ id: this.id, event: this.event || 'message', data: this.data.join('\n') });
                }
                this.event = '';
                this.data = [];
                this.id = undefined;
                continue;
            }
            if (line.startsWith(':'))
                continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? '' : line.slice(colon + 1);
            if (value.startsWith(' '))
                value = value.slice(1);
            if (field === 'data')
                this.data.push(value);
            else if (field === 'event')
                this.event = value;
            else if (field === 'id' && !value.includes('\0'))
                this.id = value;
        }
        return out;
    }
}
/** `GET /v1/events` over `fetch`, reconnecting with `Last-Event-ID` until closed. */
export class EventStream {
    constructor(opts) {
        this.closed = false;
        this.opts = opts;
        void this.run();
    }
    /** The id of the last event received (where a reconnection resumes). */
    get lastId() {
        return this.lastEventId;
    }
    close() {
        this.closed = true;
        this.abort?.abort();
        this.wake?.();
    }
    sleep(ms) {
        return new Promise((resolve) => {
            const t = setTimeout(resolve, ms);
            this.wake = () => {
                clearTimeout(t);
                resolve();
            };
        });
    }
    async run() {
        const first = this.opts.reconnectDelayMs?.first ?? 500;
        const max = this.opts.reconnectDelayMs?.max ?? 10000;
        let delay = first;
        while (!this.closed) {
            try {
                const received = await this.once();
                if (received)
                    delay = first;
            }
            catch (e) {
                if (this.closed)
                    break;
                const err = e instanceof DialbridgeError
                    ? e
                    : new DialbridgeError('network_error', `Event stream failed: ${String(e)}`, 0);
                this.opts.onError?.(err);
                if (err.status === 401) {
                    const refreshed = await this.opts.credentials.refresh(err.code).catch(() => false);
                    if (!refreshed)
                        delay = max;
                }
            }
            if (this.closed)
                break;
            await this.sleep(delay);
            delay = Math.min(max, delay * 2);
        }
    }
    /** One connection; true when it delivered at least one event. */
    async once() {
        this.abort = new AbortController();
        const headers = {
            Accept: 'text/event-stream',
            ...(await this.opts.credentials.headers()),
        };
        if (this.lastEventId)
            headers['Last-Event-ID'] = this.lastEventId;
        const resp = await this.opts.fetch(this.opts.apiBase + '/v1/events', {
            headers,
            signal: this.abort.signal,
            cache: 'no-store',
        });
        if (!resp.ok || !resp.body) {
            let body = null;
            try {
                body = await resp.json();
            }
            catch {
                /* not JSON */
            }
            throw errorFromResponse(resp.status, body);
        }
        this.opts.onOpen?.(this.lastEventId);
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SseParser();
        let any = false;
        for (;;) {
            const { value, done } = await reader.read();
            if (done)
                return any;
            for (const msg of parser.push(decoder.decode(value, { stream: true }))) {
                if (msg.id !== undefined)
                    this.lastEventId = msg.id;
                any = true;
                this.opts.onMessage(msg);
            }
        }
    }
}
function readSecret(answer) {
    if (typeof answer === 'string')
        return { secret: answer };
    const a = answer;
    const secret = (a.client_secret ?? a.clientSecret);
    const expires = (a.expires_at ?? a.expiresAt);
    if (typeof secret !== 'string' || !secret.startsWith('cs_')) {
        throw new DialbridgeError('client_secret_unavailable', 'fetchClientSecret did not return a client secret (cs_…)', 0);
    }
    const ms = typeof expires === 'string' ? Date.parse(expires) : NaN;
    const user = (a.user_id ?? a.userId);
    return {
        secret,
        expiresAtMs: Number.isFinite(ms) ? ms : undefined,
        userId: typeof user === 'string' && user ? user : undefined,
    };
}
/** Fetches a new secret this long before the current one expires. */
const REFRESH_MARGIN_MS = 30000;
/** A loaded SDK: `calls`, `on`, `off`, `close`. */
export class Dialbridge {
    /** Use {@link loadDialbridge}. */
    constructor(publishableKey, opts) {
        this.listeners = new Map();
        this.statuses = new Map();
        if (!publishableKey.startsWith('pk_')) {
            throw new DialbridgeError('publishable_key_invalid', 'A publishable key starts with pk_', 0);
        }
        if (typeof opts?.fetchClientSecret !== 'function') {
            throw new DialbridgeError('client_secret_unavailable', 'fetchClientSecret is required', 0);
        }
        this.publishableKey = publishableKey;
        this.opts = opts;
        const origin = globalThis.location?.origin;
        const base = opts.apiBase ?? origin;
        if (!base)
            throw new DialbridgeError('invalid_request', 'apiBase is required outside a page', 0);
        this.apiBase = base.replace(/\/+$/, '');
        const f = opts.fetch ?? globalThis.fetch;
        this.fetchFn = (input, init) => f(input, init);
        this.credentials = {
            headers: async () => ({
                Authorization: `Bearer ${(await this.secret()).secret}`,
                'Dialbridge-Publishable-Key': this.publishableKey,
            }),
            refresh: async (code) => {
                if (code !== 'client_secret_expired' &&
                    code !== 'client_secret_invalid' &&
                    code !== 'unauthorized') {
                    return false;
                }
                this.state = undefined;
                await this.secret();
                return true;
            },
        };
        const req = (method, path, body, headers) => apiRequest(this.fetchFn, this.apiBase, this.credentials, method, path, body, headers);
        this.calls = {
            create: async (p) => {
                if (!p || typeof p.dialString !== 'string' || !p.dialString.trim()) {
                    throw new InvalidRequestError('missing_dial_string', 'dialString is required', 0);
                }
                // The API requires user_id: without userId, the client session's user (from the
                // backend's answer to POST /v1/client_sessions, as fetchClientSecret returned it).
                const userId = p.userId ?? (await this.secret()).userId;
                const body = callBody(p, userId);
                const headers = p.idempotencyKey
                    ? { 'Idempotency-Key': p.idempotencyKey }
                    : {};
                return req('POST', '/v1/calls', body, headers);
            },
            retrieve: (id) => req('GET', `/v1/calls/${encodeURIComponent(id)}`),
            hangup: (id) => req('POST', `/v1/calls/${encodeURIComponent(id)}/hangup`, {}),
            list: (p = {}) => {
                const q = new URLSearchParams();
                if (p.status)
                    q.set('status', p.status);
                if (p.limit)
                    q.set('limit', String(p.limit));
                if (p.cursor)
                    q.set('cursor', p.cursor);
                const qs = q.toString();
                return req('GET', `/v1/calls${qs ? `?${qs}` : ''}`);
            },
        };
    }
    /** The current client secret, fetched anew when missing or about to expire. */
    async secret() {
        const s = this.state;
        if (s && (s.expiresAtMs === undefined || s.expiresAtMs - REFRESH_MARGIN_MS > Date.now())) {
            return s;
        }
        if (!this.pending) {
            this.pending = (async () => {
                try {
                    let answer;
                    try {
                        answer = await this.opts.fetchClientSecret();
                    }
                    catch (e) {
                        throw new DialbridgeError('client_secret_unavailable', `fetchClientSecret failed: ${String(e)}`, 0);
                    }
                    const next = readSecret(answer);
                    this.state = next;
                    return next;
                }
                finally {
                    this.pending = undefined;
                }
            })();
        }
        return this.pending;
    }
    /** Loads the first client secret (done by {@link loadDialbridge}). */
    async ready() {
        await this.secret();
        return this;
    }
    /** Listens to `event`; returns a function that stops listening. The event stream opens
     * with the first listener and closes with the last. */
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(fn);
        if (!this.stream)
            this.openStream();
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.listeners.get(event)?.delete(fn);
        const any = [...this.listeners.values()].some((s) => s.size > 0);
        if (!any) {
            this.stream?.close();
            this.stream = undefined;
        }
    }
    /** Stops the event stream and drops every listener. */
    close() {
        this.listeners.clear();
        this.stream?.close();
        this.stream = undefined;
    }
    emit(event, payload) {
        for (const fn of this.listeners.get(event) ?? []) {
            try {
                fn(payload);
            }
            catch {
                /* a listener's failure is its own */
            }
        }
    }
    openStream() {
        this.stream = new EventStream({
            fetch: this.fetchFn,
            apiBase: this.apiBase,
            credentials: this.credentials,
            reconnectDelayMs: this.opts.reconnectDelayMs,
            onOpen: (lastEventId) => this.emit('open', { lastEventId }),
            onError: (err) => this.emit('error', err),
            onMessage: (msg) => {
                let data;
                try {
                    data = JSON.parse(msg.data);
                }
                catch {
                    return;
                }
                const callId = typeof data.call_id === 'string' ? data.call_id : undefined;
                const status = typeof data.status === 'string' ? data.status : undefined;
                if (!callId || !status)
                    return;
                const ev = {
                    id: msg.id ?? '',
                    type: msg.event,
                    callId,
                    status,
                    at: typeof data.at === 'string' ? data.at : undefined,
                    leg: typeof data.leg === 'string' ? data.leg : null,
                    data,
                };
                this.emit('call.event', ev);
                const previous = this.statuses.get(callId);
                if (previous !== status) {
                    this.statuses.set(callId, status);
                    this.emit('call.status', { callId, status, previous, at: ev.at, leg: ev.leg, event: ev });
                }
            },
        });
    }
}
/** Loads the SDK: checks the publishable key, fetches the first client secret. */
export async function loadDialbridge(publishableKey, options) {
    return new Dialbridge(publishableKey, options).ready();
}
