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
export type { ClientOptions, ClientState, ClientStats, Handler, SendOptions, SendResult, TokenProvider } from "./client.js";
export { ClientCore, DEFAULT_CORE_OPTIONS } from "./core.js";
export type { Action, CoreOptions, DurableMessage, DurableState, Limits, Position, QueuePolicy, Status } from "./core.js";
export { indexedDbStore, memoryStore } from "./store.js";
export type { StateStore } from "./store.js";
export { browserLifecycle } from "./lifecycle.js";
export type { Lifecycle, LifecycleEvent } from "./lifecycle.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { ErrorCode, NO_RECONNECT_CODES, ProtocolError, codeName } from "./codes.js";
export { DeliveryError, ClientClosedError } from "./errors.js";
export { jsonCodec, msgpackCodec, loadMsgpack, JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL } from "./codec.js";
export type { Codec, MsgpackModule, Payload } from "./codec.js";
export { protobufCodec, loadProtobuf, PROTOBUF_SUBPROTOCOL } from "./protobuf.js";
export type { ProtobufWire } from "./protobuf.js";
export { fromWire, toWire, MESSAGE_TYPES } from "./envelope.js";
export type { Envelope, MessageType } from "./envelope.js";
export { checkValue, DataModelError, DEFAULT_LIMITS, MAX_DEPTH, MAX_VALUES } from "./datamodel.js";
export type { DataLimits } from "./datamodel.js";
export { parseJson } from "./json.js";
export { randomId } from "./ids.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport.js";
