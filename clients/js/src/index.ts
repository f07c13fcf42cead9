/**
 * WarpSocket client for browsers and Node.js (20+).
 *
 *     import { WarpSocketClient } from "warpsocket";
 *     const client = new WarpSocketClient("ws://127.0.0.1:8080/ws");
 *     client.on("said", (message) => console.log(message.data));
 *     await client.connect();
 *     await client.send("say", { text: "hi" }, { ack: true });
 */
export { WarpSocketClient, Message } from "./client.js";
export type { ClientOptions, ClientState, ClientStats, Handler, SendOptions, SendResult, SlowAck, TokenProvider } from "./client.js";
export { ClientCore, DEFAULT_CORE_OPTIONS } from "./core.js";
export type { Action, CoreOptions, DurableMessage, DurableState, Limits, Position, QueuePolicy, Status } from "./core.js";
export { indexedDbStore, memoryStore } from "./store.js";
export type { StateStore } from "./store.js";
export { devtoolsHook, HOOK_NAME, MAX_ENVELOPES, MAX_STATES } from "./debug.js";
export type { DebugEvent, DebugPending, DebugRecord, DebugStatus, DevtoolsHook } from "./debug.js";
export { browserLifecycle } from "./lifecycle.js";
export type { Lifecycle, LifecycleEvent } from "./lifecycle.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { ErrorCode, NO_RECONNECT_CODES, ProtocolError, codeName } from "./codes.js";
export { ConnectError, DeliveryError, ClientClosedError } from "./errors.js";
export { jsonCodec, msgpackCodec, loadMsgpack, JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL } from "./codec.js";
export type { Codec, MsgpackModule, Payload } from "./codec.js";
export { protobufCodec, loadProtobuf, PROTOBUF_SUBPROTOCOL } from "./protobuf.js";
export type { ProtobufWire } from "./protobuf.js";
export { fromWire, toWire, MESSAGE_TYPES, parseTrace, validTraceparent } from "./envelope.js";
export type { Envelope, MessageType, TraceContext } from "./envelope.js";
export { checkValue, DataModelError, DEFAULT_LIMITS, MAX_DEPTH, MAX_VALUES } from "./datamodel.js";
export type { DataLimits } from "./datamodel.js";
export { parseJson } from "./json.js";
export { randomId } from "./ids.js";
export {
  ANNOUNCE_EVENT,
  IncomingTransfer,
  OutgoingTransfer,
  TRANSFER_EXTENSION,
  TransferError,
  Transfers,
  chunkCount,
  chunkData,
  decodeBase64url,
  encodeBase64url,
  verifiedChunk,
} from "./transfer.js";
export type { TransferHandler, TransferSink } from "./transfer.js";
export { Sha256, sha256Hex } from "./sha256.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport.js";
export { canonicalJson, b64url, b64urlDecode, CanonicalError } from "./canonical.js";
export { E2E_EXTENSION, E2EError, KeyRing, ScopedKeys, Sealer, associatedData, isSealed, openSealed, scopeOf, seal } from "./e2e.js";
export type { KeyProvider } from "./e2e.js";
export { SIGN_EXTENSION, Ed25519Key, HmacKey, SignatureError, SignatureKeys, checkReplay, signWire, signingInput } from "./signing.js";
export type { SignatureKey } from "./signing.js";
export { ReplayGuard } from "./replay.js";
export type { CryptoFailure } from "./secure.js";
export { BATCH_EXTENSION, OutgoingBatch, expandBatch, grantedBounds } from "./batch.js";
export { URL_HELLO_MAX_BYTES, URL_HELLO_PARAM, urlHelloQuery, urlHelloText, withUrlHello } from "./urlhello.js";
export type { BatchBounds } from "./batch.js";
