// An example ingest source in Node.js: a toy matching engine's L3 market, published to
// tickwire with the ingest protocol v1 (docs/ingest.md) using the `nats` npm package.
//
//   cd examples/ingest && npm install
//   node feeder.js --nats nats://127.0.0.1:4222 --symbol BTC-USD [--messages 1000] [--rate 200]
//
// It publishes an orders_snapshot, then `orders` messages of a few add / modify / cancel /
// execute events each on tickwire.ingest.<SYMBOL>, answers snapshot requests on
// tickwire.ingest.<SYMBOL>.snapshot, and at the end prints its own L2 book as one JSON
// line (the test compares it with what a WebSocket client verified).
"use strict";
const { connect } = require("nats");

function args() {
  const out = { nats: "nats://127.0.0.1:4222", symbol: "BTC-USD", messages: 0, rate: 200, prefix: "tickwire" };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  out.messages = Number(out.messages);
  out.rate = Number(out.rate);
  return out;
}

// A deterministic generator, so runs can be compared.
let state = 12345;
function rand() {
  state = (state * 1103515245 + 12345) % 2147483648;
  return state / 2147483648;
}
const pick = (n) => Math.floor(rand() * n);

// Quantities in thousandths (integers: exact), prices in cents; written as decimal strings.
const MID = 10000;
const price = (cents) => `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, "0")}`;
const qty = (milli) => `${Math.floor(milli / 1000)}.${String(milli % 1000).padStart(3, "0")}`;

const orders = new Map(); // id -> [side, cents, milli]
let nextId = 1;
let seq = 0;

function step() {
  const ids = [...orders.keys()];
  const r = rand();
  if (ids.length && r < 0.2) {
    const id = ids[pick(ids.length)];
    orders.delete(id);
    return ["cancel", id];
  }
  if (ids.length && r < 0.35) {
    const id = ids[pick(ids.length)];
    const m = 1 + pick(50000);
    orders.get(id)[2] = m;
    return ["modify", id, qty(m)];
  }
  if (ids.length && r < 0.5) {
    const id = ids[pick(ids.length)];
    const o = orders.get(id);
    const m = Math.min(o[2], 1 + pick(50000));
    o[2] -= m;
    if (o[2] === 0) orders.delete(id);
    return ["execute", id, qty(m)];
  }
  const side = rand() < 0.5 ? "bid" : "ask";
  const cents = side === "bid" ? MID - 1 - pick(25) : MID + 1 + pick(25);
  const m = 1 + pick(50000);
  const id = `n${nextId++}`;
  orders.set(id, [side, cents, m]);
  return ["add", id, side, price(cents), qty(m)];
}

function snapshot(symbol) {
  const rows = [...orders.entries()].map(([id, [s, c, m]]) => [id, s, price(c), qty(m)]);
  return { v: 1, type: "orders_snapshot", symbol, seq, orders: rows };
}

function encode(msg) {
  // ts must be an exact integer of nanoseconds: JSON numbers above 2^53 lose digits in
  // JavaScript, so it is written by hand.
  const ts = BigInt(Date.now()) * 1000000n;
  return JSON.stringify({ ...msg, ts: "__TS__" }).replace('"__TS__"', ts.toString());
}

function book() {
  const out = { bid: {}, ask: {} };
  for (const [s, c, m] of orders.values()) out[s][c] = (out[s][c] || 0) + m;
  return {
    bid: Object.entries(out.bid).map(([c, m]) => [price(Number(c)), qty(m)]),
    ask: Object.entries(out.ask).map(([c, m]) => [price(Number(c)), qty(m)]),
  };
}

async function main() {
  const a = args();
  const nc = await connect({ servers: a.nats.split(",") });
  const subject = `${a.prefix}.ingest.${a.symbol}`;
  for (let i = 0; i < 30; i++) step();
  const sub = nc.subscribe(`${subject}.snapshot`);
  (async () => {
    for await (const m of sub) m.respond(new TextEncoder().encode(encode(snapshot(a.symbol))));
  })();
  nc.publish(subject, encode(snapshot(a.symbol)));
  const period = 1000 / a.rate;
  for (let n = 0; !a.messages || n < a.messages; n++) {
    const events = [step(), step(), step()];
    seq += 1;
    nc.publish(subject, encode({ v: 1, type: "orders", symbol: a.symbol, seq, events }));
    await new Promise((r) => setTimeout(r, period));
  }
  await nc.flush();
  // Stay a moment to answer a late snapshot request, then report the book.
  await new Promise((r) => setTimeout(r, 300));
  process.stdout.write(JSON.stringify({ seq, book: book() }) + "\n");
  await nc.drain();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
