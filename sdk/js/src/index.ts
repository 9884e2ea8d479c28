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

/** What `fetchClientSecret` may return: the secret, or the backend's answer as it came (its
 * `user_id` is the user `calls.create()` places calls for when given no `userId`). */
export type ClientSecretAnswer =
  | string
  | { client_secret: string; expires_at?: string; user_id?: string }
  | { clientSecret: string; expiresAt?: string; userId?: string };

export interface DialbridgeOptions {
  /** Asks the application's backend for a new client secret. Called at load, when the secret
   * is about to expire, and when the server refuses it (expired, revoked, server restarted). */
  fetchClientSecret: () => Promise<ClientSecretAnswer>;
  /** Base URL of the dialbridge REST API; default: the page's origin. */
  apiBase?: string;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Delays of the event stream's reconnection, in ms: first and largest (default 500, 10000). */
  reconnectDelayMs?: { first: number; max: number };
}

/** The error codes of the API (see the REST API's documentation), and the SDK's own. */
export type ErrorCode =
  | 'unauthorized'
  | 'client_secret_invalid'
  | 'client_secret_expired'
  | 'client_secret_not_allowed'
  | 'publishable_key_invalid'
  | 'user_not_allowed'
  | 'call_not_found'
  | 'call_ended'
  | 'call_not_active'
  | 'missing_user_id'
  | 'missing_dial_string'
  | 'invalid_user_id'
  | 'invalid_destination'
  | 'destination_not_allowed'
  | 'rate_limited'
  | 'network_error'
  | 'invalid_response'
  | 'client_secret_unavailable'
  | (string & {});

/** A failure, with the API's `code` and HTTP `status` (0 when no answer came). */
export class DialbridgeError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** `Retry-After` in seconds, for 429 and 503. */
  readonly retryAfter?: number;
  constructor(code: ErrorCode, message: string, status: number, retryAfter?: number) {
    super(message);
    this.name = 'DialbridgeError';
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** A 401: the credentials were refused even after a fresh client secret. */
export class AuthenticationError extends DialbridgeError {
  constructor(code: ErrorCode, message: string, status: number) {
    super(code, message, status);
    this.name = 'AuthenticationError';
  }
}

/** A 403: the client secret does not reach this (another user, an admin route). */
export class PermissionError extends DialbridgeError {
  constructor(code: ErrorCode, message: string, status: number) {
    super(code, message, status);
    this.name = 'PermissionError';
  }
}

/** A 400 or 422: the request itself is wrong (missing field, undialable number). */
export class InvalidRequestError extends DialbridgeError {
  constructor(code: ErrorCode, message: string, status: number) {
    super(code, message, status);
    this.name = 'InvalidRequestError';
  }
}

/** A 404: no such call (or one of another user). */
export class NotFoundError extends DialbridgeError {
  constructor(code: ErrorCode, message: string, status: number) {
    super(code, message, status);
    this.name = 'NotFoundError';
  }
}

/** A 429 or 503: try again after `retryAfter` seconds. */
export class RateLimitError extends DialbridgeError {
  constructor(code: ErrorCode, message: string, status: number, retryAfter?: number) {
    super(code, message, status, retryAfter);
    this.name = 'RateLimitError';
  }
}

/** The error for an API answer. */
export function errorFromResponse(
  status: number,
  body: unknown,
  retryAfter?: number,
): DialbridgeError {
  const err = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  const code = typeof err?.code === 'string' ? err.code : `http_${status}`;
  const message = typeof err?.message === 'string' ? err.message : `HTTP ${status}`;
  if (status === 401) return new AuthenticationError(code, message, status);
  if (status === 403) return new PermissionError(code, message, status);
  if (status === 404) return new NotFoundError(code, message, status);
  if (status === 400 || status === 422) return new InvalidRequestError(code, message, status);
  if (status === 429 || status === 503) return new RateLimitError(code, message, status, retryAfter);
  return new DialbridgeError(code, message, status, retryAfter);
}

export type CallStatus =
  | 'queued'
  | 'ringing'
  | 'in-progress'
  | 'completed'
  | 'busy'
  | 'no-answer'
  | 'failed'
  | 'canceled';

/** A call as the API shows it (`GET /v1/calls/{id}`); fields are as the API names them. */
export interface Call {
  call_id: string;
  status: CallStatus;
  user_id?: string | null;
  dial_string?: string;
  destination?: string | null;
  caller_id?: string | null;
  created_at?: string;
  duration?: number | null;
  legs?: Record<string, unknown> | null;
  timeline?: Array<{ at: string; kind: string; leg?: string | null; detail?: unknown }>;
  metadata?: Record<string, unknown> | null;
  [field: string]: unknown;
}

export interface CreateCallParams {
  /** The user to call first; default: the client session's user (`user_id` of the answer
   * that `fetchClientSecret` returned). The API requires one: a bare secret string names no
   * user, and then `userId` must be given. */
  userId?: string;
  /** The customer: E.164, local number, or extension. */
  dialString: string;
  callerId?: string;
  callbackUrl?: string;
  ringTimeout?: number;
  metadata?: Record<string, unknown>;
  /** Sent as `Idempotency-Key`: the same key gives the same answer for 24 h. */
  idempotencyKey?: string;
}

/** The body of `POST /v1/calls` as the SDK sends it (checked against the published OpenAPI
 * document by `npm run typecheck:api`). */
export interface CallBody {
  dial_string: string;
  user_id?: string;
  caller_id?: string;
  callback_url?: string;
  ring_timeout?: number;
  metadata?: Record<string, unknown>;
}

/** The request body for `calls.create`: only the fields given. */
export function callBody(p: CreateCallParams, userId: string | undefined): CallBody {
  const body: CallBody = { dial_string: p.dialString };
  if (userId !== undefined) body.user_id = userId;
  if (p.callerId !== undefined) body.caller_id = p.callerId;
  if (p.callbackUrl !== undefined) body.callback_url = p.callbackUrl;
  if (p.ringTimeout !== undefined) body.ring_timeout = p.ringTimeout;
  if (p.metadata !== undefined) body.metadata = p.metadata;
  return body;
}

/** One event of the live stream. */
export interface CallEvent {
  /** The stream's event id (resume point). */
  id: string;
  /** The event's name (`ringing`, `agent_answered`, `in_progress`, `ended`, `sip`, …). */
  type: string;
  callId: string;
  status: CallStatus;
  at?: string;
  leg?: string | null;
  data: Record<string, unknown>;
}

/** `call.status`: a call's status changed. */
export interface CallStatusEvent {
  callId: string;
  status: CallStatus;
  previous?: CallStatus;
  at?: string;
  leg?: string | null;
  event: CallEvent;
}

export interface EventMap {
  'call.status': CallStatusEvent;
  'call.event': CallEvent;
  /** The event stream is connected. */
  open: { lastEventId?: string };
  /** The event stream failed; it reconnects by itself. */
  error: DialbridgeError;
}

type Listener<T> = (payload: T) => void;

/** The credentials a request carries. */
export interface Credentials {
  headers(): Promise<Record<string, string>>;
  /** Called on a 401; true when new credentials are worth a retry. */
  refresh(code: string): Promise<boolean>;
}

/** A JSON request to the API with `credentials`, retried once after a refresh on 401. */
export async function apiRequest<T>(
  fetchFn: typeof fetch,
  apiBase: string,
  credentials: Credentials,
  method: string,
  path: string,
  body?: unknown,
  extraHeaders: Record<string, string> = {},
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const headers: Record<string, string> = {
      Accept: 'application/json',
      ...(await credentials.headers()),
      ...extraHeaders,
    };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let resp: Response;
    try {
      resp = await fetchFn(apiBase + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new DialbridgeError('network_error', `Cannot reach dialbridge: ${String(e)}`, 0);
    }
    const text = await resp.text();
    let json: unknown = null;
    if (text) {
      try {
        json = JSON.parse(text);
      } catch {
        if (resp.ok) {
          throw new DialbridgeError('invalid_response', 'The answer is not JSON', resp.status);
        }
      }
    }
    if (resp.ok) return json as T;
    const err = errorFromResponse(resp.status, json, Number(resp.headers.get('retry-after')) || undefined);
    if (resp.status === 401 && attempt === 0 && (await credentials.refresh(err.code))) continue;
    throw err;
  }
}

/** One parsed Server-Sent Event. */
export interface SseMessage {
  id?: string;
  event: string;
  data: string;
}

/** Splits an SSE text stream into messages (fed chunk by chunk). */
export class SseParser {
  private buf = '';
  private id?: string;
  private event = '';
  private data: string[] = [];

  /** Feeds text; returns the messages it completed. */
  push(chunk: string): SseMessage[] {
    this.buf += chunk;
    const out: SseMessage[] = [];
    for (;;) {
      const nl = this.buf.search(/\r\n|\r|\n/);
      if (nl < 0) break;
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
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id' && !value.includes('\0')) this.id = value;
    }
    return out;
  }
}

export interface EventStreamOptions {
  fetch: typeof fetch;
  apiBase: string;
  credentials: Credentials;
  onMessage: (msg: SseMessage) => void;
  onOpen?: (lastEventId?: string) => void;
  onError?: (err: DialbridgeError) => void;
  reconnectDelayMs?: { first: number; max: number };
}

/** `GET /v1/events` over `fetch`, reconnecting with `Last-Event-ID` until closed. */
export class EventStream {
  private lastEventId?: string;
  private closed = false;
  private abort?: AbortController;
  private readonly opts: EventStreamOptions;
  private wake?: () => void;

  constructor(opts: EventStreamOptions) {
    this.opts = opts;
    void this.run();
  }

  /** The id of the last event received (where a reconnection resumes). */
  get lastId(): string | undefined {
    return this.lastEventId;
  }

  close(): void {
    this.closed = true;
    this.abort?.abort();
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  private async run(): Promise<void> {
    const first = this.opts.reconnectDelayMs?.first ?? 500;
    const max = this.opts.reconnectDelayMs?.max ?? 10_000;
    let delay = first;
    while (!this.closed) {
      try {
        const received = await this.once();
        if (received) delay = first;
      } catch (e) {
        if (this.closed) break;
        const err =
          e instanceof DialbridgeError
            ? e
            : new DialbridgeError('network_error', `Event stream failed: ${String(e)}`, 0);
        this.opts.onError?.(err);
        if (err.status === 401) {
          const refreshed = await this.opts.credentials.refresh(err.code).catch(() => false);
          if (!refreshed) delay = max;
        }
      }
      if (this.closed) break;
      await this.sleep(delay);
      delay = Math.min(max, delay * 2);
    }
  }

  /** One connection; true when it delivered at least one event. */
  private async once(): Promise<boolean> {
    this.abort = new AbortController();
    const headers: Record<string, string> = {
      Accept: 'text/event-stream',
      ...(await this.opts.credentials.headers()),
    };
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
    const resp = await this.opts.fetch(this.opts.apiBase + '/v1/events', {
      headers,
      signal: this.abort.signal,
      cache: 'no-store',
    });
    if (!resp.ok || !resp.body) {
      let body: unknown = null;
      try {
        body = await resp.json();
      } catch {
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
      if (done) return any;
      for (const msg of parser.push(decoder.decode(value, { stream: true }))) {
        if (msg.id !== undefined) this.lastEventId = msg.id;
        any = true;
        this.opts.onMessage(msg);
      }
    }
  }
}

interface SecretState {
  secret: string;
  expiresAtMs?: number;
  /** The session's user (`user_id` of the backend's answer), when the answer names it. */
  userId?: string;
}

function readSecret(answer: ClientSecretAnswer): SecretState {
  if (typeof answer === 'string') return { secret: answer };
  const a = answer as Record<string, unknown>;
  const secret = (a.client_secret ?? a.clientSecret) as unknown;
  const expires = (a.expires_at ?? a.expiresAt) as unknown;
  if (typeof secret !== 'string' || !secret.startsWith('cs_')) {
    throw new DialbridgeError(
      'client_secret_unavailable',
      'fetchClientSecret did not return a client secret (cs_…)',
      0,
    );
  }
  const ms = typeof expires === 'string' ? Date.parse(expires) : NaN;
  const user = (a.user_id ?? a.userId) as unknown;
  return {
    secret,
    expiresAtMs: Number.isFinite(ms) ? ms : undefined,
    userId: typeof user === 'string' && user ? user : undefined,
  };
}

/** Fetches a new secret this long before the current one expires. */
const REFRESH_MARGIN_MS = 30_000;

/** A loaded SDK: `calls`, `on`, `off`, `close`. */
export class Dialbridge {
  readonly publishableKey: string;
  readonly apiBase: string;
  readonly calls: {
    create(params: CreateCallParams): Promise<Call>;
    retrieve(callId: string): Promise<Call>;
    hangup(callId: string): Promise<{ call_id: string; status: CallStatus; hangup: string }>;
    list(params?: { status?: CallStatus; limit?: number; cursor?: string }): Promise<{
      data: Call[];
      next_cursor: string | null;
    }>;
  };
  private readonly fetchFn: typeof fetch;
  private readonly opts: DialbridgeOptions;
  private state?: SecretState;
  private pending?: Promise<SecretState>;
  private readonly listeners = new Map<keyof EventMap, Set<Listener<never>>>();
  private stream?: EventStream;
  private readonly statuses = new Map<string, CallStatus>();
  private readonly credentials: Credentials;

  /** Use {@link loadDialbridge}. */
  constructor(publishableKey: string, opts: DialbridgeOptions) {
    if (!publishableKey.startsWith('pk_')) {
      throw new DialbridgeError('publishable_key_invalid', 'A publishable key starts with pk_', 0);
    }
    if (typeof opts?.fetchClientSecret !== 'function') {
      throw new DialbridgeError('client_secret_unavailable', 'fetchClientSecret is required', 0);
    }
    this.publishableKey = publishableKey;
    this.opts = opts;
    const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
    const base = opts.apiBase ?? origin;
    if (!base) throw new DialbridgeError('invalid_request', 'apiBase is required outside a page', 0);
    this.apiBase = base.replace(/\/+$/, '');
    const f = opts.fetch ?? globalThis.fetch;
    this.fetchFn = (input, init) => f(input, init);
    this.credentials = {
      headers: async () => ({
        Authorization: `Bearer ${(await this.secret()).secret}`,
        'Dialbridge-Publishable-Key': this.publishableKey,
      }),
      refresh: async (code) => {
        if (
          code !== 'client_secret_expired' &&
          code !== 'client_secret_invalid' &&
          code !== 'unauthorized'
        ) {
          return false;
        }
        this.state = undefined;
        await this.secret();
        return true;
      },
    };
    const req = <T>(method: string, path: string, body?: unknown, headers?: Record<string, string>) =>
      apiRequest<T>(this.fetchFn, this.apiBase, this.credentials, method, path, body, headers);
    this.calls = {
      create: async (p) => {
        if (!p || typeof p.dialString !== 'string' || !p.dialString.trim()) {
          throw new InvalidRequestError('missing_dial_string', 'dialString is required', 0);
        }
        // The API requires user_id: without userId, the client session's user (from the
        // backend's answer to POST /v1/client_sessions, as fetchClientSecret returned it).
        const userId = p.userId ?? (await this.secret()).userId;
        const body = callBody(p, userId);
        const headers: Record<string, string> = p.idempotencyKey
          ? { 'Idempotency-Key': p.idempotencyKey }
          : {};
        return req<Call>('POST', '/v1/calls', body, headers);
      },
      retrieve: (id) => req<Call>('GET', `/v1/calls/${encodeURIComponent(id)}`),
      hangup: (id) => req('POST', `/v1/calls/${encodeURIComponent(id)}/hangup`, {}),
      list: (p = {}) => {
        const q = new URLSearchParams();
        if (p.status) q.set('status', p.status);
        if (p.limit) q.set('limit', String(p.limit));
        if (p.cursor) q.set('cursor', p.cursor);
        const qs = q.toString();
        return req('GET', `/v1/calls${qs ? `?${qs}` : ''}`);
      },
    };
  }

  /** The current client secret, fetched anew when missing or about to expire. */
  private async secret(): Promise<SecretState> {
    const s = this.state;
    if (s && (s.expiresAtMs === undefined || s.expiresAtMs - REFRESH_MARGIN_MS > Date.now())) {
      return s;
    }
    if (!this.pending) {
      this.pending = (async () => {
        try {
          let answer: ClientSecretAnswer;
          try {
            answer = await this.opts.fetchClientSecret();
          } catch (e) {
            throw new DialbridgeError(
              'client_secret_unavailable',
              `fetchClientSecret failed: ${String(e)}`,
              0,
            );
          }
          const next = readSecret(answer);
          this.state = next;
          return next;
        } finally {
          this.pending = undefined;
        }
      })();
    }
    return this.pending;
  }

  /** Loads the first client secret (done by {@link loadDialbridge}). */
  async ready(): Promise<this> {
    await this.secret();
    return this;
  }

  /** Listens to `event`; returns a function that stops listening. The event stream opens
   * with the first listener and closes with the last. */
  on<K extends keyof EventMap>(event: K, fn: Listener<EventMap[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn as Listener<never>);
    if (!this.stream) this.openStream();
    return () => this.off(event, fn);
  }

  off<K extends keyof EventMap>(event: K, fn: Listener<EventMap[K]>): void {
    this.listeners.get(event)?.delete(fn as Listener<never>);
    const any = [...this.listeners.values()].some((s) => s.size > 0);
    if (!any) {
      this.stream?.close();
      this.stream = undefined;
    }
  }

  /** Stops the event stream and drops every listener. */
  close(): void {
    this.listeners.clear();
    this.stream?.close();
    this.stream = undefined;
  }

  private emit<K extends keyof EventMap>(event: K, payload: EventMap[K]): void {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        (fn as Listener<EventMap[K]>)(payload);
      } catch {
        /* a listener's failure is its own */
      }
    }
  }

  private openStream(): void {
    this.stream = new EventStream({
      fetch: this.fetchFn,
      apiBase: this.apiBase,
      credentials: this.credentials,
      reconnectDelayMs: this.opts.reconnectDelayMs,
      onOpen: (lastEventId) => this.emit('open', { lastEventId }),
      onError: (err) => this.emit('error', err),
      onMessage: (msg) => {
        let data: Record<string, unknown>;
        try {
          data = JSON.parse(msg.data) as Record<string, unknown>;
        } catch {
          return;
        }
        const callId = typeof data.call_id === 'string' ? data.call_id : undefined;
        const status = typeof data.status === 'string' ? (data.status as CallStatus) : undefined;
        if (!callId || !status) return;
        const ev: CallEvent = {
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
export async function loadDialbridge(
  publishableKey: string,
  options: DialbridgeOptions,
): Promise<Dialbridge> {
  return new Dialbridge(publishableKey, options).ready();
}
