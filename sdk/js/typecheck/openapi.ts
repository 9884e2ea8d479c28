// The SDK's types against the TypeScript types generated from the published OpenAPI document
// (docs/openapi.json, by openapi-typescript into build/openapi.d.ts). `npm run typecheck:api`
// compiles this file: it fails when what the SDK sends no longer fits the document, or when
// what the document says the API answers no longer fits the SDK's types.
import type { paths } from '../build/openapi';
import type { Call, CallBody, CallStatus } from '../src/index';

/** Compiles only when `B` is assignable to `A`. */
type Fits<A, B extends A> = B;

type CreateBody = paths['/v1/calls']['post']['requestBody'] extends infer R
  ? R extends { content: { 'application/json': infer J } }
    ? J
    : never
  : never;
type CallAnswer = paths['/v1/calls/{call_id}']['get']['responses'][200]['content']['application/json'];

/** What `calls.create` sends (with the user the API requires) is a body the document takes. */
export type SdkBodyFitsTheDocument = Fits<CreateBody, CallBody & { user_id: string }>;
/** A call as the document answers it is a `Call` of the SDK. */
export type AnswerFitsTheSdkCall = Fits<Call, CallAnswer>;
/** The document's call statuses are the SDK's. */
export type StatusesAgree = Fits<CallStatus, CallAnswer['status']>;
export type NoStatusMissing = Fits<CallAnswer['status'], CallStatus>;
