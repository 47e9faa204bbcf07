'use strict';
// Shared helpers of the Node benchmark processes: a monotonic clock in
// microseconds (the same CLOCK_MONOTONIC as Python's time.monotonic_ns()),
// a log-linear latency histogram, JSON-line I/O with the orchestrator, a
// minimal RESP encoder/parser (no Redis client library: cheaper per message),
// a minimal HTTP/1.1 response parser for the hub's API answers, and a pool of
// keep-alive connections with a bounded number of requests in flight on each.

const net = require('net');
const readline = require('readline');

// process.hrtime is CLOCK_MONOTONIC on Linux, like Python's time.monotonic_ns().
function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

// Latency histogram: 1 us buckets below 2048 us, then 256 buckets per power of two
// (< 0.3 % relative error). bench/run.py has the same bucket -> value mapping.
const LINEAR = 2048;
const SUB = 256;
const NBUCKETS = LINEAR + 24 * SUB;

function bucketOf(us) {
  if (us < 0) us = 0;
  if (us < LINEAR) return Math.floor(us);
  const b = LINEAR + Math.floor((Math.log2(us) - 11) * SUB);
  return b < NBUCKETS ? b : NBUCKETS - 1;
}

class Step {
  constructor() {
    this.count = 0;
    this.hist = new Uint32Array(NBUCKETS);
    this.max = 0;
    this.first = 0; // receipt time of the first message (us, monotonic)
    this.last = 0;
  }

  add(latency, t) {
    this.count++;
    this.hist[bucketOf(latency)]++;
    if (latency > this.max) this.max = latency;
    if (this.first === 0) this.first = t;
    this.last = t;
  }

  toJSON() {
    const sparse = [];
    for (let i = 0; i < NBUCKETS; i++) if (this.hist[i]) sparse.push([i, this.hist[i]]);
    return { count: this.count, max: this.max, first: this.first, last: this.last, hist: sparse };
  }
}

class Steps {
  constructor() {
    this.map = new Map();
  }

  get(step) {
    let s = this.map.get(step);
    if (s === undefined) {
      s = new Step();
      this.map.set(step, s);
    }
    return s;
  }

  take() {
    const out = {};
    for (const [k, v] of this.map) out[k] = v.toJSON();
    this.map = new Map();
    return out;
  }
}

// Payload layout (ASCII, so a text frame): KIND STEP ',' T_US ',' padding.
// KIND: 'M' group message, 'P' probe, 'U' upstream (client -> Redis).
// BENCH_FILL=json pads with JSON records (as compressible as a real API's JSON, unlike 'xxx...'),
// the same for every message of a size, so a compressing server sees what it would in production.
const fills = new Map();
function jsonFill(n) {
  let text = fills.get(n);
  if (text === undefined) {
    const parts = [];
    let len = 0;
    let seed = 12345;
    for (let i = 0; len < n; i++) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      const rec = `{"id":${i},"symbol":"S${seed % 500}","price":${(seed % 100000) / 100},"qty":${seed % 977}},`;
      parts.push(rec);
      len += rec.length;
    }
    text = parts.join('').slice(0, n);
    fills.set(n, text);
  }
  return text;
}

// What follows a message's head to make it ``size`` bytes.
function padding(size, headLen) {
  if (size <= headLen) return '';
  return process.env.BENCH_FILL === 'json' ? jsonFill(size - headLen) : 'x'.repeat(size - headLen);
}

function makePayload(kind, step, tUs, size) {
  const head = `${kind}${step},${tUs},`;
  return head + padding(size, head.length);
}

// Parse 'KIND STEP , T_US ,' from a Buffer without decoding the padding.
function parseHead(buf) {
  const kind = buf[0];
  let i = 1;
  let step = 0;
  let c;
  while ((c = buf[i++]) !== 44 && c !== undefined) step = step * 10 + (c - 48);
  let t = 0;
  while ((c = buf[i++]) !== 44 && c !== undefined) t = t * 10 + (c - 48);
  return [kind, step, t];
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Commands arrive as JSON lines on stdin; stdin closing means: exit.
function onCommands(handler, onEnd) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit({ event: 'error', error: `bad command: ${line}` });
      return;
    }
    Promise.resolve(handler(cmd)).catch((err) => emit({ event: 'error', error: String(err && err.stack || err) }));
  });
  rl.on('close', onEnd);
}

function cpuUs() {
  const u = process.cpuUsage();
  return { user: u.user, system: u.system };
}

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2);
    if (!(key in defaults)) throw new Error(`unknown option ${a}`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`${a} needs a value`);
    out[key] = typeof defaults[key] === 'number' ? Number(v) : v;
  }
  return out;
}

// -- RESP ---------------------------------------------------------------------

function encodeCommand(args) {
  let s = `*${args.length}\r\n`;
  for (const a of args) {
    const str = String(a);
    s += `$${Buffer.byteLength(str)}\r\n${str}\r\n`;
  }
  return s;
}

const INCOMPLETE = Symbol('incomplete');

// Streaming RESP2 reply parser; bulk strings come back as Buffers (views).
class RespParser {
  constructor() {
    this.buf = Buffer.alloc(0);
    this.pos = 0;
  }

  feed(chunk) {
    this.buf = this.pos < this.buf.length ? Buffer.concat([this.buf.subarray(this.pos), chunk]) : chunk;
    this.pos = 0;
    const replies = [];
    for (;;) {
      const start = this.pos;
      const r = this._value();
      if (r === INCOMPLETE) {
        this.pos = start;
        break;
      }
      replies.push(r);
    }
    return replies;
  }

  _line() {
    const end = this.buf.indexOf(13, this.pos);
    if (end < 0 || end + 1 >= this.buf.length) return INCOMPLETE;
    const s = this.buf.toString('latin1', this.pos, end);
    this.pos = end + 2;
    return s;
  }

  _value() {
    if (this.pos >= this.buf.length) return INCOMPLETE;
    const type = this.buf[this.pos++];
    const line = this._line();
    if (line === INCOMPLETE) return INCOMPLETE;
    switch (type) {
      case 43: // +
        return line;
      case 45: // -
        return new Error(line);
      case 58: // :
        return Number(line);
      case 36: { // $
        const n = Number(line);
        if (n < 0) return null;
        if (this.pos + n + 2 > this.buf.length) return INCOMPLETE;
        const v = this.buf.subarray(this.pos, this.pos + n);
        this.pos += n + 2;
        return v;
      }
      case 42: { // *
        const n = Number(line);
        if (n < 0) return null;
        const arr = new Array(n);
        for (let i = 0; i < n; i++) {
          const v = this._value();
          if (v === INCOMPLETE) return INCOMPLETE;
          arr[i] = v;
        }
        return arr;
      }
      default:
        throw new Error(`RESP protocol error: type byte ${type}`);
    }
  }
}

function splitHostPort(addr) {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i) || '127.0.0.1', port: Number(addr.slice(i + 1)) };
}

// -- HTTP/1.1 (the hub's API) ----------------------------------------------------

// Streaming parser of HTTP/1.1 answers that carry Content-Length (every API
// answer but the event stream does); each answer comes back as {status, body}.
class HttpResponseParser {
  constructor() {
    this.buf = Buffer.alloc(0);
  }

  feed(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const answers = [];
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) break;
      const head = this.buf.toString('latin1', 0, end);
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (m === null) throw new Error(`HTTP answer without content-length: ${head.split('\r\n')[0]}`);
      const total = end + 4 + Number(m[1]);
      if (this.buf.length < total) break;
      answers.push({ status: Number(head.slice(9, 12)), body: this.buf.toString('utf8', end + 4, total) });
      this.buf = this.buf.subarray(total);
    }
    return answers;
  }
}

// 'http://host:port' -> {host, port}
function splitUrl(url) {
  return splitHostPort(new URL(url).host);
}

function httpRequest(method, path, host, apiKey, body) {
  return `${method} ${path} HTTP/1.1\r\nhost: ${host}\r\nauthorization: Bearer ${apiKey}\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

// One connection: requests written as they come (pipelined up to the pool's
// depth), answers matched to their callbacks in order. The hub closes a
// keep-alive connection left idle for webSocket.handshakeTimeout: the pool then
// dials a new one; a connection closed with requests unanswered is an error.
class Pipe {
  constructor(host, port, parser, onError) {
    this.callbacks = [];
    this.head = 0;
    this.inflight = 0;
    this.closed = false;
    this.parser = parser;
    this.sock = net.createConnection({ host, port });
    this.sock.setNoDelay(true);
    this.sock.on('error', onError);
    this.sock.on('close', () => {
      this.closed = true;
      if (this.inflight > 0) onError(new Error(`connection closed with ${this.inflight} request(s) unanswered`));
    });
    this.sock.on('data', (chunk) => {
      for (const answer of this.parser.feed(chunk)) {
        const cb = this.callbacks[this.head];
        this.callbacks[this.head++] = undefined;
        if (this.head > 4096) {
          this.callbacks.splice(0, this.head);
          this.head = 0;
        }
        this.inflight--;
        cb(answer);
      }
    });
  }

  send(request, cb) {
    this.inflight++;
    this.callbacks.push(cb);
    this.sock.write(request);
  }
}

// A fixed number of connections (Redis or HTTP keep-alive), at most `depth`
// requests in flight on each (1: no pipelining); each request goes to the
// connection with the fewest in flight, and requests beyond conns x depth wait
// here. `onAnswer(answer)` of each request is called with its answer.
class Pool {
  constructor({ host, port, conns, depth, makeParser, onError }) {
    this.depth = Math.max(1, depth);
    this.dial = () => new Pipe(host, port, makeParser(), onError);
    this.queue = [];
    this.qhead = 0;
    this.pipes = [];
    this.reconnects = 0;
    this.corked = new Set();
    for (let i = 0; i < Math.max(1, conns); i++) this.pipes.push(this.dial());
  }

  submit(request, onAnswer) {
    this.queue.push([request, onAnswer]);
    this.dispatch();
  }

  // The open connection with the fewest requests in flight, if one has room.
  free() {
    let best = null;
    for (let i = 0; i < this.pipes.length; i++) {
      if (this.pipes[i].closed && this.pipes[i].inflight === 0) {
        this.pipes[i] = this.dial(); // idle and closed by the hub: dial again, as a backend's pool does
        this.reconnects++;
      }
      const pipe = this.pipes[i];
      if (!pipe.closed && pipe.inflight < this.depth && (best === null || pipe.inflight < best.inflight)) best = pipe;
    }
    return best;
  }

  dispatch() {
    while (this.qhead < this.queue.length) {
      const pipe = this.free();
      if (pipe === null) break;
      const [request, onAnswer] = this.queue[this.qhead];
      this.queue[this.qhead++] = undefined;
      if (!this.corked.has(pipe)) { // one write per connection for all that is sent in this tick
        this.corked.add(pipe);
        pipe.sock.cork();
        process.nextTick(() => {
          this.corked.delete(pipe);
          pipe.sock.uncork();
        });
      }
      pipe.send(request, (answer) => {
        onAnswer(answer);
        this.dispatch();
      });
    }
    if (this.qhead > 4096 && this.qhead * 2 > this.queue.length) {
      this.queue.splice(0, this.qhead);
      this.qhead = 0;
    }
  }

  close() {
    for (const pipe of this.pipes) pipe.sock.end();
  }
}

// -- Redis Cluster: slot routing ------------------------------------------------

// CRC16/XMODEM of a key, as Redis Cluster computes it (polynomial 0x1021, init 0).
const CRC16 = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

// The slot of a key or channel name: CRC16 of its {hash tag} if it has a non-empty one, else of the
// whole name, modulo 16384.
function keySlot(name) {
  let buf = Buffer.from(name);
  const open = buf.indexOf(123); // {
  if (open >= 0) {
    const close = buf.indexOf(125, open + 1); // }
    if (close > open + 1) buf = buf.subarray(open + 1, close);
  }
  let crc = 0;
  for (const b of buf) crc = ((crc << 8) & 0xffff) ^ CRC16[((crc >> 8) ^ b) & 0xff];
  return crc & 16383;
}

// --slots "START-END=HOST:PORT,..." (bench/run.py reads it from CLUSTER SLOTS) -> a slot -> address
// table and the list of distinct addresses (the masters), or null for an empty spec.
function parseSlots(spec) {
  if (!spec) return null;
  const owner = new Array(16384).fill('');
  const masters = [];
  for (const part of spec.split(',')) {
    const [range, addr] = part.split('=');
    const [a, b] = range.split('-').map(Number);
    for (let s = a; s <= b; s++) owner[s] = addr;
    if (!masters.includes(addr)) masters.push(addr);
  }
  return { owner, masters, addressOf: (name) => owner[keySlot(name)] };
}

module.exports = {
  keySlot, parseSlots,
  nowUs, bucketOf, Step, Steps, makePayload, padding, parseHead, emit, onCommands, cpuUs, parseArgs,
  encodeCommand, RespParser, splitHostPort, splitUrl, HttpResponseParser, httpRequest, Pool, NBUCKETS, LINEAR, SUB,
};
