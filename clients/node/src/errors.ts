// Rich error details: memsched attaches a google.rpc.BadRequest to INVALID_ARGUMENT errors (which field
// broke which rule). grpc-js hands them over raw in the `grpc-status-details-bin` trailer; this decodes
// them with a two-message schema instead of shipping googleapis' protos.

import type * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

export interface FieldViolation {
  field: string;
  description: string;
}

const root = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'Any', id: 3 },
              },
            },
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});
const Status = root.lookupType('google.rpc.Status');
const BadRequest = root.lookupType('google.rpc.BadRequest');

interface DecodedAny {
  type_url: string;
  value: Uint8Array;
}

/** The BadRequest field violations carried by a failed call (empty when there are none). */
export function fieldViolations(error: grpc.ServiceError): FieldViolation[] {
  const out: FieldViolation[] = [];
  for (const raw of error.metadata?.get('grpc-status-details-bin') ?? []) {
    const status = Status.toObject(Status.decode(raw as Buffer)) as { details?: DecodedAny[] };
    for (const detail of status.details ?? []) {
      if (detail.type_url.endsWith('/google.rpc.BadRequest')) {
        const bad = BadRequest.toObject(BadRequest.decode(detail.value)) as { field_violations?: FieldViolation[] };
        out.push(...(bad.field_violations ?? []));
      }
    }
  }
  return out;
}
