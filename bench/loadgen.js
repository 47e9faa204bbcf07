'use strict';
// WebSocket load generator (one process; bench/run.py starts as many as needed,
// each below the 20,000 open-files limit).
//
// Client i (global index OFFSET+i) connects to URL?KEYPARAM=k<OFFSET+i>; the
// benchmark listener puts it in group g<(OFFSET+i) % GROUPS>. Source addresses
// rotate over --local (e.g. 127.0.0.2,127.0.0.3) so that many clients do not
// exhaust one address' ephemeral ports.
//
// usage: node loadgen.js --url ws://127.0.0.1:8080/ws --clients 1000 [--offset 0]
//        [--groups 1] [--local 127.0.0.1] [--concurrency 200] [--retries 3] [--receiver raw|ws]
//        [--deflate 0|1]   offer permessage-deflate (no context takeover either way: each frame inflates alone)
// stdout: JSON lines. {"event":"started"} at once; then on stdin commands:
//   {"cmd":"connect"}                 open every client -> {"event":"open",...}
//   {"cmd":"probe_status"}            -> clients that got a probe, groups still missing one
//   {"cmd":"expect","step":S,"count":C} -> {"event":"step_done",...} when step S has C receipts
//   {"cmd":"report"}                  -> per-step receipts and latency histograms (then reset)
//   {"cmd":"send","step":S,"rate":R,"seconds":T,"size":B}  every client sends R msg/s
//   {"cmd":"quit"}
// Every loop is bounded: connects by --clients x --retries, sends by rate x seconds.

const zlib = require('zlib');
const WebSocket = require('ws');
const { nowUs, Steps, makePayload, parseHead, emit, onCommands, cpuUs, parseArgs } = require('./common');

const opts = parseArgs(process.argv.slice(2), {
  url: 'ws://127.0.0.1:8080/ws',
  key: 'session_key',
  clients: 100,
  offset: 0,
  groups: 1,
  local: '', // comma list of source addresses; empty: let the kernel choose (no bind)
  concurrency: 200,
  retries: 3,
  timeout: 20000,
  receiver: 'raw',
  deflate: 0,
});
const DEFLATE_TAIL = Buffer.from([0, 0, 0xff, 0xff]);
const INFLATE_OPTS = { finishFlush: zlib.constants.Z_SYNC_FLUSH }; // a message ends on a sync flush, not a final block
let wireBytes = 0; // frame bytes received (header + payload, compressed or not), since the last report
const N = opts.clients;
const G = Math.max(1, opts.groups);
const locals = opts.local.split(',').filter(Boolean);

const sockets = new Array(N).fill(null);
const probed = new Uint8Array(N);
let probedCount = 0;
let lastProbeAt = 0;
let opened = 0;
let failed = 0;
let closedEarly = 0; // closed by the server (or the network) while we were not quitting
let quitting = false;
const errors = {};
const steps = new Steps();
let expectStep = null;
let expectCount = 0;
let otherMessages = 0;

function onMessage(i, data) {
  const now = nowUs();
  const [kind, step, t] = parseHead(data);
  if (kind === 77) { // 'M'
    const s = steps.get(step);
    s.add(now - t, now);
    if (step === expectStep && s.count === expectCount) {
      expectStep = null;
      emit({ event: 'step_done', step, count: s.count, max: s.max, last: s.last });
    }
  } else if (kind === 80) { // 'P'
    if (!probed[i]) {
      probed[i] = 1;
      probedCount++;
      lastProbeAt = now;
    }
  } else {
    otherMessages++;
  }
}

// --receiver raw: ws does the handshake, the sending, pings and close; received
// frames are parsed here straight from the socket (server frames are unmasked
// and, from WS-Hub and the peer, unfragmented). This skips ws' Writable-stream
// receiver and event emission, about half of the load generator's user CPU per
// delivery, so the load side stays cheaper per delivery than the server.
// --receiver ws keeps ws' own 'message' events (for comparison).
function takeOverReceiving(i, ws) {
  const sock = ws._socket;
  sock.removeAllListeners('data');
  let rest = null;
  sock.on('data', (chunk) => {
    if (rest !== null) {
      chunk = Buffer.concat([rest, chunk]);
      rest = null;
    }
    const len = chunk.length;
    let pos = 0;
    while (pos + 2 <= len) {
      const b0 = chunk[pos];
      let n = chunk[pos + 1] & 127;
      let h = 2;
      if (n === 126) {
        if (pos + 4 > len) break;
        n = chunk.readUInt16BE(pos + 2);
        h = 4;
      } else if (n === 127) {
        if (pos + 10 > len) break;
        n = Number(chunk.readBigUInt64BE(pos + 2));
        h = 10;
      }
      if (pos + h + n > len) break;
      const op = b0 & 15;
      let payload = chunk.subarray(pos + h, pos + h + n);
      pos += h + n;
      wireBytes += h + n;
      if (b0 & 0x40) payload = zlib.inflateRawSync(Buffer.concat([payload, DEFLATE_TAIL]), INFLATE_OPTS);
      if (op <= 2) onMessage(i, payload);
      else if (op === 9) ws.pong(payload);
      else if (op === 8) {
        ws.terminate();
        return;
      }
    }
    if (pos < len) rest = Buffer.from(chunk.subarray(pos));
  });
}

function open(i, attempt) {
  return new Promise((resolve) => {
    const g = opts.offset + i;
    const ws = new WebSocket(`${opts.url}?${opts.key}=k${g}`, {
      perMessageDeflate: opts.deflate ? { serverNoContextTakeover: true, clientNoContextTakeover: true } : false,
      skipUTF8Validation: true,
      localAddress: locals.length ? locals[i % locals.length] : undefined,
      handshakeTimeout: opts.timeout,
      maxPayload: 16 << 20,
    });
    let isOpen = false;
    ws.on('open', () => {
      isOpen = true;
      sockets[i] = ws;
      if (opts.receiver === 'raw') takeOverReceiving(i, ws);
      opened++;
      resolve(true);
    });
    ws.on('message', (data) => onMessage(i, data));
    ws.on('error', (err) => {
      const msg = err.code || err.message;
      errors[msg] = (errors[msg] || 0) + 1;
    });
    ws.on('close', () => {
      if (isOpen) {
        sockets[i] = null;
        if (!quitting) closedEarly++;
      } else {
        resolve(false);
      }
    });
  }).then((ok) => {
    if (ok) return true;
    if (attempt < opts.retries) return new Promise((r) => setTimeout(r, 100 * (attempt + 1))).then(() => open(i, attempt + 1));
    failed++;
    return false;
  });
}

async function connectAll() {
  const t0 = nowUs();
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const i = next++;
      await open(i, 0);
    }
  };
  const workers = [];
  for (let w = 0; w < Math.min(opts.concurrency, N); w++) workers.push(worker());
  await Promise.all(workers);
  emit({ event: 'open', opened, failed, errors, t0, t1: nowUs(), cpu: cpuUs() });
}

function probeStatus() {
  const missing = new Set();
  for (let i = 0; i < N; i++) if (sockets[i] !== null && !probed[i]) missing.add((opts.offset + i) % G);
  let live = 0;
  for (let i = 0; i < N; i++) if (sockets[i] !== null) live++;
  emit({ event: 'probe_status', have: probedCount, live, missing_groups: [...missing], last: lastProbeAt });
}

function send(cmd) {
  return new Promise((resolve) => {
    const live = sockets.filter((s) => s !== null && s.readyState === WebSocket.OPEN);
    const n = live.length;
    const total = Math.round(cmd.rate * cmd.seconds * n);
    const rate = cmd.rate * n; // messages per second over all clients
    const t0 = nowUs();
    let sent = 0;
    const tick = () => {
      const now = nowUs();
      const due = Math.min(total, Math.floor(((now - t0) * rate) / 1e6) + 1);
      if (due > sent) {
        const payload = makePayload('U', cmd.step, now, cmd.size);
        while (sent < due) {
          const ws = live[sent % n];
          if (ws.readyState === WebSocket.OPEN) ws.send(payload);
          sent++;
        }
      }
      if (sent < total) setTimeout(tick, 1);
      else resolve({ sent, t0, t1: nowUs() });
    };
    if (n === 0) resolve({ sent: 0, t0, t1: t0 });
    else tick();
  }).then((r) => emit({ event: 'sent', step: cmd.step, ...r, cpu: cpuUs() }));
}

onCommands((cmd) => {
  switch (cmd.cmd) {
    case 'connect':
      return connectAll();
    case 'probe_status':
      return probeStatus();
    case 'expect': {
      const s = steps.get(cmd.step);
      if (s.count >= cmd.count) emit({ event: 'step_done', step: cmd.step, count: s.count, max: s.max, last: s.last });
      else {
        expectStep = cmd.step;
        expectCount = cmd.count;
      }
      return undefined;
    }
    case 'report': {
      const wire = wireBytes;
      wireBytes = 0;
      return emit({
        event: 'report', steps: steps.take(), opened, failed, closed_early: closedEarly, other: otherMessages,
        errors, cpu: cpuUs(), wire_bytes: wire,
      });
    }
    case 'send':
      return send(cmd);
    case 'quit':
      quitting = true;
      for (const ws of sockets) if (ws) ws.terminate();
      emit({ event: 'bye' });
      return setTimeout(() => process.exit(0), 10);
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}, () => process.exit(0));

emit({ event: 'started', pid: process.pid });
