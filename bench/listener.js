'use strict';
// Benchmark listener: answers every PREFIXclient-new with the key's groups on
// PREFIXgroups-new:KEY. Keys are 'k<INDEX>' (see loadgen.js) and belong to group
// 'g<INDEX % GROUPS>'. All answers to one chunk of Redis input go out in one
// write (pipelined); replies to the PUBLISHes are read and counted, not awaited.
//
// On a Redis Cluster (--slots START-END=HOST:PORT,...): with --sharded 1 it
// SSUBSCRIBEs client-new on the master of its slot and SPUBLISHes each answer to
// the master of the answer's slot; with --sharded 0, SUBSCRIBE on --redis (any
// node: classic messages reach every node) and PUBLISH on the answer's master.
//
// usage: node listener.js --redis 127.0.0.1:6380 --prefix ws-hub: --groups 10 [--slots SPEC --sharded 0|1]
// stdout: {"event":"ready"} once SUBSCRIBE is confirmed; {"event":"stats",...} on
// {"cmd":"stats"}; exits when stdin closes.

const net = require('net');
const { emit, onCommands, cpuUs, parseArgs, encodeCommand, RespParser, splitHostPort, parseSlots,
} = require('./common');

const opts = parseArgs(process.argv.slice(2), {
  redis: '127.0.0.1:6379', prefix: 'ws-hub:', groups: 1, slots: '', sharded: 0,
});
const slots = parseSlots(opts.slots);
const sharded = Boolean(opts.sharded && slots);
const groups = Math.max(1, opts.groups);

let answered = 0;
let replies = 0;
let errors = 0;

function groupsOf(key) {
  const m = /^k(\d+)$/.exec(key);
  const i = m ? Number(m[1]) : 0;
  return `["g${i % groups}"]`;
}

function connect(addr) {
  const { host, port } = splitHostPort(addr);
  const s = net.createConnection({ host, port });
  s.setNoDelay(true);
  return s;
}

// One publishing connection (standalone) or one per master (cluster); each has its pending output.
const pubs = new Map();
for (const addr of slots ? slots.masters : [opts.redis]) {
  const s = connect(addr);
  const parser = new RespParser();
  s.on('data', (chunk) => {
    for (const r of parser.feed(chunk)) {
      replies++;
      if (r instanceof Error) errors++;
    }
  });
  pubs.set(addr, { sock: s, out: '' });
}

const channel = `${opts.prefix}client-new`;
const sub = connect(sharded ? slots.addressOf(channel) : opts.redis);
const subParser = new RespParser();
const verb = slots && opts.sharded ? 'SPUBLISH' : 'PUBLISH';
sub.on('connect', () => sub.write(encodeCommand([sharded ? 'SSUBSCRIBE' : 'SUBSCRIBE', channel])));
sub.on('data', (chunk) => {
  for (const r of subParser.feed(chunk)) {
    if (!Array.isArray(r)) continue;
    const kind = r[0].toString();
    if (kind === 'subscribe' || kind === 'ssubscribe') {
      emit({ event: 'ready' });
    } else if (kind === 'message' || kind === 'smessage') {
      const key = r[2].toString();
      const answer = `${opts.prefix}groups-new:${key}`;
      pubs.get(slots ? slots.addressOf(answer) : opts.redis).out += encodeCommand([verb, answer, groupsOf(key)]);
      answered++;
    }
  }
  for (const p of pubs.values()) {
    if (p.out) {
      p.sock.write(p.out);
      p.out = '';
    }
  }
});

for (const s of [...[...pubs.values()].map((p) => p.sock), sub]) {
  s.on('error', (err) => {
    emit({ event: 'error', error: `redis: ${err.message}` });
    process.exit(1);
  });
}

onCommands((cmd) => {
  if (cmd.cmd === 'stats') emit({ event: 'stats', answered, replies, errors, cpu: cpuUs() });
}, () => process.exit(0));
