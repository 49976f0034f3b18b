// A typed Node client for memsched (memsched.v1.Scheduler) over @grpc/grpc-js.
//
// The protos are loaded at run time with @grpc/proto-loader (no protoc needed); the TypeScript types in
// src/generated/ come from the same protos through proto-loader-gen-types (`npm run gen-types`), so a
// misspelt field is a compile error. Unary calls return promises; Session is a bidirectional stream with
// send()/end() and an async iterator of flattened events.

import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import type { ProtoGrpcType } from './generated/scheduler';
import type { SchedulerClient } from './generated/memsched/v1/Scheduler';
import type { ScheduleMessageItem } from './generated/memsched/v1/ScheduleMessageItem';
import type { ScheduleLogForWebItem__Output } from './generated/memsched/v1/ScheduleLogForWebItem';
import type { ItemAck__Output } from './generated/memsched/v1/ItemAck';
import type { ItemRejection__Output } from './generated/memsched/v1/ItemRejection';
import type { ItemCompletion__Output } from './generated/memsched/v1/ItemCompletion';
import type { SessionRequest } from './generated/memsched/v1/SessionRequest';
import type { SessionResponse__Output } from './generated/memsched/v1/SessionResponse';
import type { GetMemoryRequest } from './generated/memsched/v1/GetMemoryRequest';
import type { GetMemoryResponse__Output } from './generated/memsched/v1/GetMemoryResponse';
import type { GetStatusRequest } from './generated/memsched/v1/GetStatusRequest';
import type { GetStatusResponse__Output } from './generated/memsched/v1/GetStatusResponse';
import type { WaitIdleResponse__Output } from './generated/memsched/v1/WaitIdleResponse';
import type { GetInfoResponse__Output } from './generated/memsched/v1/GetInfoResponse';
import type { CubeSummary__Output } from './generated/memsched/v1/CubeSummary';
import type { GetCubeStateResponse__Output } from './generated/memsched/v1/GetCubeStateResponse';
import type { ItemStatus__Output } from './generated/memsched/v1/ItemStatus';
import type { SubmitResponse__Output } from './generated/memsched/v1/SubmitResponse';
import type { ListCubesResponse__Output } from './generated/memsched/v1/ListCubesResponse';
import type { ListDeadLettersResponse__Output } from './generated/memsched/v1/ListDeadLettersResponse';
import type { RedriveDeadLettersResponse__Output } from './generated/memsched/v1/RedriveDeadLettersResponse';
import type { WatchLogsRequest } from './generated/memsched/v1/WatchLogsRequest';
import type { WatchLogsResponse__Output } from './generated/memsched/v1/WatchLogsResponse';

export type {
  ScheduleMessageItem,
  ScheduleLogForWebItem__Output as ScheduleLogForWebItem,
  ItemAck__Output as ItemAck,
  ItemRejection__Output as ItemRejection,
  ItemCompletion__Output as ItemCompletion,
  GetMemoryResponse__Output as GetMemoryResponse,
  GetStatusResponse__Output as GetStatusResponse,
  GetInfoResponse__Output as GetInfoResponse,
};

/** One thing a Session reported, in the order the server sent it. */
export type SessionEvent =
  | { kind: 'ack'; ack: ItemAck__Output }
  | { kind: 'rejection'; rejection: ItemRejection__Output }
  | { kind: 'log'; log: ScheduleLogForWebItem__Output }
  | { kind: 'completion'; completion: ItemCompletion__Output };

export interface ClientOptions {
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Channel credentials; plaintext when absent (use grpc.credentials.createSsl(...) for TLS). */
  credentials?: grpc.ChannelCredentials;
  /** The directory holding memsched/v1/*.proto; defaults to the repository's protos/. */
  protoDir?: string;
  /** Deadline of unary calls, in seconds (default 30). */
  timeoutSeconds?: number;
}

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

// dist/src/client.js -> the repository root's protos/ (also right for src/client.ts under ts-node or tsx)
const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', '..', 'protos');
const DEFAULT_PROTO_DIR_FROM_SRC = path.resolve(__dirname, '..', '..', '..', 'protos');

function loadScheduler(protoDir: string | undefined): ProtoGrpcType {
  const dirs = protoDir ? [protoDir] : [DEFAULT_PROTO_DIR, DEFAULT_PROTO_DIR_FROM_SRC];
  const definition = protoLoader.loadSync('memsched/v1/scheduler.proto', { ...LOADER_OPTIONS, includeDirs: dirs });
  return grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
}

/** Flatten a SessionResponse: acks, rejections, then log items, then completions (a completion follows the
 * log items of its item). */
export function sessionEvents(response: SessionResponse__Output): SessionEvent[] {
  return [
    ...response.acks.map((ack): SessionEvent => ({ kind: 'ack', ack })),
    ...response.rejections.map((rejection): SessionEvent => ({ kind: 'rejection', rejection })),
    ...response.logs.map((log): SessionEvent => ({ kind: 'log', log })),
    ...response.completions.map((completion): SessionEvent => ({ kind: 'completion', completion })),
  ];
}

/** A bidirectional Session: send() batches of items, end() when done, iterate for events. The server ends
 * the stream once end() was called and every accepted item has completed. */
export class Session implements AsyncIterable<SessionEvent> {
  constructor(private readonly call: grpc.ClientDuplexStream<SessionRequest, SessionResponse__Output>) {}

  /** Send one request carrying `items`; returns their item ids. */
  send(items: ScheduleMessageItem[]): string[] {
    this.call.write({ items });
    return items.map((item) => item.item_id ?? '');
  }

  /** No more items (half-close). */
  end(): void {
    this.call.end();
  }

  cancel(): void {
    this.call.cancel();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SessionEvent> {
    for await (const response of this.call as AsyncIterable<SessionResponse__Output>) {
      yield* sessionEvents(response);
    }
  }
}

export class MemschedClient {
  readonly stub: SchedulerClient;
  private readonly metadata: grpc.Metadata;
  private readonly timeoutSeconds: number;

  constructor(address = '127.0.0.1:50051', options: ClientOptions = {}) {
    const proto = loadScheduler(options.protoDir);
    this.stub = new proto.memsched.v1.Scheduler(address, options.credentials ?? grpc.credentials.createInsecure());
    this.metadata = new grpc.Metadata();
    if (options.token) {
      this.metadata.set('authorization', `Bearer ${options.token}`);
    }
    this.timeoutSeconds = options.timeoutSeconds ?? 30;
  }

  private deadline(seconds = this.timeoutSeconds): grpc.CallOptions {
    return { deadline: new Date(Date.now() + seconds * 1000) };
  }

  /** Run one unary call as a promise; `start` gets the metadata, the deadline and the callback. */
  private unary<Res>(
    start: (md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => grpc.ClientUnaryCall,
    options: grpc.CallOptions = this.deadline(),
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      start(this.metadata, options, (error, response) => {
        if (error) reject(error);
        else resolve(response as Res);
      });
    });
  }

  /** Wait until the channel is connected. */
  waitReady(seconds = 10): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(new Date(Date.now() + seconds * 1000), (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Store a batch in one call (all or nothing): one ack per item. INVALID_ARGUMENT names the bad fields. */
  async submit(items: ScheduleMessageItem[]): Promise<ItemAck__Output[]> {
    const response = await this.unary<SubmitResponse__Output>((md, o, cb) => this.stub.Submit({ items }, md, o, cb));
    return response.acks;
  }

  session(): Session {
    return new Session(this.stub.Session(this.metadata));
  }

  watchLogs(request: WatchLogsRequest): grpc.ClientReadableStream<WatchLogsResponse__Output> {
    return this.stub.WatchLogs(request, this.metadata);
  }

  getMemory(request: GetMemoryRequest): Promise<GetMemoryResponse__Output> {
    return this.unary((md, o, cb) => this.stub.GetMemory(request, md, o, cb));
  }

  getStatus(request: GetStatusRequest): Promise<GetStatusResponse__Output> {
    return this.unary((md, o, cb) => this.stub.GetStatus(request, md, o, cb));
  }

  /** Wait up to `seconds` until nothing of the user (or cube) is waiting or in progress. */
  waitIdle(userId: string, memCubeId = '', seconds = 30): Promise<WaitIdleResponse__Output> {
    const request = { user_id: userId, mem_cube_id: memCubeId, timeout: { seconds: String(Math.floor(seconds)) } };
    return this.unary((md, o, cb) => this.stub.WaitIdle(request, md, o, cb), this.deadline(seconds + 10));
  }

  getInfo(): Promise<GetInfoResponse__Output> {
    return this.unary((md, o, cb) => this.stub.GetInfo({}, md, o, cb));
  }

  async listCubes(userId = ''): Promise<CubeSummary__Output[]> {
    const request = { user_id: userId };
    return (await this.unary<ListCubesResponse__Output>((md, o, cb) => this.stub.ListCubes(request, md, o, cb))).cubes;
  }

  getCubeState(userId: string, memCubeId: string): Promise<GetCubeStateResponse__Output> {
    const request = { user_id: userId, mem_cube_id: memCubeId };
    return this.unary((md, o, cb) => this.stub.GetCubeState(request, md, o, cb));
  }

  async listDeadLetters(userId = '', memCubeId = '', limit = 0): Promise<ItemStatus__Output[]> {
    const request = { user_id: userId, mem_cube_id: memCubeId, limit };
    const response = await this.unary<ListDeadLettersResponse__Output>((md, o, cb) =>
      this.stub.ListDeadLetters(request, md, o, cb),
    );
    return response.items;
  }

  async redriveDeadLetters(itemIds: string[]): Promise<string[]> {
    const request = { item_ids: itemIds };
    const response = await this.unary<RedriveDeadLettersResponse__Output>((md, o, cb) =>
      this.stub.RedriveDeadLetters(request, md, o, cb),
    );
    return response.item_ids;
  }

  close(): void {
    this.stub.close();
  }
}
