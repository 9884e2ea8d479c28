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
export type ClientSecretAnswer = string | {
    client_secret: string;
    expires_at?: string;
    user_id?: string;
} | {
    clientSecret: string;
    expiresAt?: string;
    userId?: string;
};
export interface DialbridgeOptions {
    /** Asks the application's backend for a new client secret. Called at load, when the secret
     * is about to expire, and when the server refuses it (expired, revoked, server restarted). */
    fetchClientSecret: () => Promise<ClientSecretAnswer>;
    /** Base URL of the dialbridge REST API; default: the page's origin. */
    apiBase?: string;
    /** The `fetch` to use (default: the global one). */
    fetch?: typeof fetch;
    /** Delays of the event stream's reconnection, in ms: first and largest (default 500, 10000). */
    reconnectDelayMs?: {
        first: number;
        max: number;
    };
}
/** The error codes of the API (see the REST API's documentation), and the SDK's own. */
export type ErrorCode = 'unauthorized' | 'client_secret_invalid' | 'client_secret_expired' | 'client_secret_not_allowed' | 'publishable_key_invalid' | 'user_not_allowed' | 'call_not_found' | 'call_ended' | 'call_not_active' | 'missing_user_id' | 'missing_dial_string' | 'invalid_user_id' | 'invalid_destination' | 'destination_not_allowed' | 'rate_limited' | 'network_error' | 'invalid_response' | 'client_secret_unavailable' | (string & {});
/** A failure, with the API's `code` and HTTP `status` (0 when no answer came). */
export declare class DialbridgeError extends Error {
    readonly code: ErrorCode;
    readonly status: number;
    /** `Retry-After` in seconds, for 429 and 503. */
    readonly retryAfter?: number;
    constructor(code: ErrorCode, message: string, status: number, retryAfter?: number);
}
/** A 401: the credentials were refused even after a fresh client secret. */
export declare class AuthenticationError extends DialbridgeError {
    constructor(code: ErrorCode, message: string, status: number);
}
/** A 403: the client secret does not reach this (another user, an admin route). */
export declare class PermissionError extends DialbridgeError {
    constructor(code: ErrorCode, message: string, status: number);
}
/** A 400 or 422: the request itself is wrong (missing field, undialable number). */
export declare class InvalidRequestError extends DialbridgeError {
    constructor(code: ErrorCode, message: string, status: number);
}
/** A 404: no such call (or one of another user). */
export declare class NotFoundError extends DialbridgeError {
    constructor(code: ErrorCode, message: string, status: number);
}
/** A 429 or 503: try again after `retryAfter` seconds. */
export declare class RateLimitError extends DialbridgeError {
    constructor(code: ErrorCode, message: string, status: number, retryAfter?: number);
}
/** The error for an API answer. */
export declare function errorFromResponse(status: number, body: unknown, retryAfter?: number): DialbridgeError;
export type CallStatus = 'queued' | 'ringing' | 'in-progress' | 'completed' | 'busy' | 'no-answer' | 'failed' | 'canceled';
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
    timeline?: Array<{
        at: string;
        kind: string;
        leg?: string | null;
        detail?: unknown;
    }>;
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
export declare function callBody(p: CreateCallParams, userId: string | undefined): CallBody;
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
    open: {
        lastEventId?: string;
    };
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
export declare function apiRequest<T>(fetchFn: typeof fetch, apiBase: string, credentials: Credentials, method: string, path: string, body?: unknown, extraHeaders?: Record<string, string>): Promise<T>;
/** One parsed Server-Sent Event. */
export interface SseMessage {
    id?: string;
    event: string;
    data: string;
}
/** Splits an SSE text stream into messages (fed chunk by chunk). */
export declare class SseParser {
    private buf;
    private id?;
    private event;
    private data;
    /** Feeds text; returns the messages it completed. */
    push(chunk: string): SseMessage[];
}
export interface EventStreamOptions {
    fetch: typeof fetch;
    apiBase: string;
    credentials: Credentials;
    onMessage: (msg: SseMessage) => void;
    onOpen?: (lastEventId?: string) => void;
    onError?: (err: DialbridgeError) => void;
    reconnectDelayMs?: {
        first: number;
        max: number;
    };
}
/** `GET /v1/events` over `fetch`, reconnecting with `Last-Event-ID` until closed. */
export declare class EventStream {
    private lastEventId?;
    private closed;
    private abort?;
    private readonly opts;
    private wake?;
    constructor(opts: EventStreamOptions);
    /** The id of the last event received (where a reconnection resumes). */
    get lastId(): string | undefined;
    close(): void;
    private sleep;
    private run;
    /** One connection; true when it delivered at least one event. */
    private once;
}
/** A loaded SDK: `calls`, `on`, `off`, `close`. */
export declare class Dialbridge {
    readonly publishableKey: string;
    readonly apiBase: string;
    readonly calls: {
        create(params: CreateCallParams): Promise<Call>;
        retrieve(callId: string): Promise<Call>;
        hangup(callId: string): Promise<{
            call_id: string;
            status: CallStatus;
            hangup: string;
        }>;
        list(params?: {
            status?: CallStatus;
            limit?: number;
            cursor?: string;
        }): Promise<{
            data: Call[];
            next_cursor: string | null;
        }>;
    };
    private readonly fetchFn;
    private readonly opts;
    private state?;
    private pending?;
    private readonly listeners;
    private stream?;
    private readonly statuses;
    private readonly credentials;
    /** Use {@link loadDialbridge}. */
    constructor(publishableKey: string, opts: DialbridgeOptions);
    /** The current client secret, fetched anew when missing or about to expire. */
    private secret;
    /** Loads the first client secret (done by {@link loadDialbridge}). */
    ready(): Promise<this>;
    /** Listens to `event`; returns a function that stops listening. The event stream opens
     * with the first listener and closes with the last. */
    on<K extends keyof EventMap>(event: K, fn: Listener<EventMap[K]>): () => void;
    off<K extends keyof EventMap>(event: K, fn: Listener<EventMap[K]>): void;
    /** Stops the event stream and drops every listener. */
    close(): void;
    private emit;
    private openStream;
}
/** Loads the SDK: checks the publishable key, fetches the first client secret. */
export declare function loadDialbridge(publishableKey: string, options: DialbridgeOptions): Promise<Dialbridge>;
export {};
