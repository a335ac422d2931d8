// A payment service in Node.js enqueuing kc_tasks' tasks with celery-node, by name only.
//
//   node enqueue.js purchase PAYMENT_ID STUDENT_ID COURSE_ID AMOUNT_CENTS CURRENCY
//   node enqueue.js revoke PAYMENT_ID REASON [REFUND_ID]
//
// CELERY_BROKER_URL: amqp://... (RabbitMQ) or redis://...; for a RabbitMQ cluster, its nodes'
// URLs separated by ";" (kombu's failover form, which kc_tasks' processes take too): tried in
// order until one takes the message. Prints the task id once the broker has the message.
"use strict";
const celery = require("celery-node");
const { randomUUID } = require("crypto");

const BROKERS = (process.env.CELERY_BROKER_URL || "amqp://guest:guest@localhost:5672//")
  .split(";")
  .map((url) => url.trim())
  .filter((url) => url);
const QUEUE = "purchases";

async function sendWith(client, name, kwargs) {
  const taskId = randomUUID();
  const { headers, properties, body } = client.createTaskMessage(taskId, name, [], kwargs);
  await client.isReady();
  // client.sendTask does the same without a promise to wait on; this returns once it is sent.
  await client.broker.publish(body, "", QUEUE, headers, properties);
  return taskId;
}

// celery-node connects to one URL: a node that is down is passed over for the next one.
async function send(name, kwargs) {
  let failure;
  for (const url of BROKERS) {
    const client = celery.createClient(url, url, QUEUE);
    try {
      return await sendWith(client, name, kwargs);
    } catch (err) {
      failure = err;
    } finally {
      await client.disconnect().catch(() => {});
    }
  }
  throw failure;
}

function request(argv) {
  const [kind, ...rest] = argv;
  if (kind === "purchase" && rest.length === 5) {
    const [payment_id, student_id, course_id, amount, currency] = rest;
    return ["kc_tasks.create_purchase", { payment_id, student_id, course_id, amount_cents: Number(amount), currency }];
  }
  if (kind === "revoke" && (rest.length === 2 || rest.length === 3)) {
    const [payment_id, reason, refund_id] = rest;
    return ["kc_tasks.revoke_purchase", refund_id ? { payment_id, reason, refund_id } : { payment_id, reason }];
  }
  return null;
}

async function main() {
  const asked = request(process.argv.slice(2));
  if (asked === null) {
    console.error("usage: node enqueue.js purchase PAYMENT STUDENT COURSE AMOUNT_CENTS CURRENCY");
    console.error("       node enqueue.js revoke PAYMENT REASON [REFUND_ID]");
    process.exit(2);
  }
  console.log(await send(...asked));
}

main().catch((err) => {
  console.error(`enqueue failed: ${err.message}`);
  process.exit(1);
});
