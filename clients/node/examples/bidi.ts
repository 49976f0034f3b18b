// A bidirectional Session against a running memsched server: add the pet facts, ask a question on the
// same stream, print every acknowledgement, log item and completion as it arrives, then read the cube's
// working memory; then shows the field violations of a refused unary Submit.
//
//   npm run build && node dist/examples/bidi.js 127.0.0.1:50051
//
// The last line printed is a JSON summary (the test in tests/test_node_client.py reads it).

import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { fieldViolations, MemschedClient, type ScheduleMessageItem } from '../src';

const address = process.argv[2] ?? '127.0.0.1:50051';
const user = process.argv[3] ?? 'node-user';
const cube = process.argv[4] ?? 'pets';

function item(label: string, content: string): ScheduleMessageItem {
  return { item_id: randomUUID(), user_id: user, mem_cube_id: cube, label, content };
}

async function main(): Promise<void> {
  const client = new MemschedClient(address, { token: process.env.NODE_MEMSCHED_TOKEN });
  await client.waitReady();
  const facts = [
    { role: 'user', content: 'I just adopted a golden retriever puppy yesterday.' },
    { role: 'user', content: "His name is Max. I live near Central Park in New York where we'll walk daily." },
    { role: 'user', content: "He loves peanut butter biscuits. Personally, I'm allergic to nuts though." },
  ];
  const add = item('add', JSON.stringify(facts));
  const query = item('query', "What's my dog's name again?");
  const bad = { ...item('add', 'no user'), user_id: '' };

  const session = client.session();
  session.send([add, bad]);
  const counts = { acks: 0, rejections: 0, logs: 0, completions: 0 };
  let sentQuery = false;
  for await (const event of session) {
    switch (event.kind) {
      case 'ack':
        counts.acks++;
        console.log(`ack        ${event.ack.item_id}${event.ack.duplicate ? ' (duplicate)' : ''}`);
        break;
      case 'rejection':
        counts.rejections++;
        console.log(`rejected   ${event.rejection.item_id}: ${event.rejection.field}: ${event.rejection.reason}`);
        break;
      case 'log':
        counts.logs++;
        console.log(`log        ${event.log.label.padEnd(15)} ${event.log.log_content}`);
        break;
      case 'completion':
        counts.completions++;
        console.log(`completed  ${event.completion.item_id}: ${event.completion.status}`);
        if (!sentQuery) {
          // the add is handled: ask on the same stream, then say no more items will come
          sentQuery = true;
          session.send([query]);
          session.end();
        }
        break;
    }
  }

  const memory = await client.getMemory({ user_id: user, mem_cube_id: cube, memory_types: ['MEMORY_TYPE_WORKING_MEMORY'] });
  const working = memory.partitions[0]?.items.map((m) => m.memory) ?? [];
  console.log('working memory:');
  working.forEach((text, i) => console.log(`  ${i + 1}. ${text}`));
  const status = await client.getStatus({ item_id: query.item_id });

  // Submit is all or nothing: the bad item fails the batch with INVALID_ARGUMENT and a BadRequest detail
  let violations: string[] = [];
  try {
    await client.submit([item('add', 'fine'), bad]);
  } catch (error) {
    const e = error as grpc.ServiceError;
    violations = fieldViolations(e).map((v) => `${v.field}: ${v.description}`);
    console.log(`submit refused (${grpc.status[e.code]}): ${violations.join('; ')}`);
  }
  client.close();
  console.log(JSON.stringify({ ...counts, queryStatus: status.status, working, violations }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
