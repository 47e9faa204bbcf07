'use strict';
// Benchmark publisher: publishes timestamped messages to group g<N> at a paced
// rate, either as PUBLISH PREFIXgroup-data:g<N> on one Redis connection,
// pipelined (every 1 ms tick writes all messages due by then), or with --api
// as POST /api/groups/g<N> to the hub's HTTP API over --conns keep-alive
// connections, at most --depth requests in flight on each (1: no pipelining).
//
// On a Redis Cluster (--slots START-END=HOST:PORT,... from CLUSTER SLOTS) it keeps
// one connection per master and sends each message to the master of its
// channel's slot, as a cluster client would: SPUBLISH with --sharded 1 (shard
// channels reach only that shard), else PUBLISH (which the cluster copies to every node;
// its reply then counts that node's subscribers only).
//
// usage: node publisher.js --redis 127.0.0.1:6380 --prefix ws-hub: [--slots SPEC --sharded 0|1]
//        node publisher.js --api http://127.0.0.1:8080 --api-key K [--conns 4] [--depth 1]
//        (both --redis and --api: --via says which one rate/once/probe use; flood names its own)
// commands (JSON lines on stdin), each answered by one {"event":"done",...}:
//   {"cmd":"rate","step":S,"rate":R,"seconds":T,"groups":G,"size":B}  R msg/s, round-robin over g0..g(G-1)
//   {"cmd":"once","step":S,"group":N,"size":B}                       one message to gN
//   {"cmd":"probe","id":I,"groups":[N,...]}                          'P<I>,' to each listed group
//   {"cmd":"flood","step":S,"via":"api"|"redis","seconds":T,"conns":C,"depth":D,"group":N,"size":B}
//       closed loop on C new connections, D in flight on each, for T seconds: as many as they take
// Each answer carries the number of publishes, how many were taken ("ok": Redis
// replied with a count, the API answered 200), errors, and for Redis the sum of
// its receiver counts (subscribers that got them) and how many reached no
// subscriber at all ("zero"; null through the API, which does not say).

const net = require('net');
const {
  nowUs, emit, onCommands, cpuUs, parseArgs, RespParser, splitHostPort, splitUrl, HttpResponseParser, httpRequest,
  Pool, Step, padding, parseSlots,
} = require('./common');

const opts = parseArgs(process.argv.slice(2), {
  redis: '', prefix: 'ws-hub:', slots: '', sharded: 0, tick: 1, api: '', 'api-key': '', conns: 4, depth: 1, via: '',
});
const via = opts.via || (opts.api ? 'api' : 'redis');
const chanPrefix = `${opts.prefix}group-data:g`;
const slots = parseSlots(opts.slots);
const verb = opts.sharded ? 'SPUBLISH' : 'PUBLISH';

function fail(what, err) {
  emit({ event: 'error', error: `${what}: ${err.message}` });
  process.exit(1);
}

// One counter object per command; replies come back in order on each
// connection, so a FIFO of counters per connection (one entry per PUBLISH)
// tells whose reply each one is. Standalone: one connection; cluster: one per master.
class Link {
  constructor(addr) {
    const { host, port } = splitHostPort(addr);
    this.addr = addr;
    this.fifo = [];
    this.head = 0;
    this.pending = '';
    this.connected = false;
    this.sock = net.createConnection({ host, port });
    this.sock.setNoDelay(true);
    this.sock.on('error', (err) => fail(`redis ${addr}`, err));
    const parser = new RespParser();
    this.sock.on('data', (chunk) => {
      for (const r of parser.feed(chunk)) {
        const c = this.fifo[this.head];
        this.fifo[this.head++] = undefined;
        if (this.head > 65536) {
          this.fifo.splice(0, this.head);
          this.head = 0;
        }
        if (c === undefined) continue;
        counted(c, r);
      }
    });
  }

  flush() {
    if (this.pending) {
      this.sock.write(this.pending);
      this.pending = '';
    }
  }
}

const links = new Map(); // address -> Link
if (opts.redis) {
  for (const addr of slots ? slots.masters : [opts.redis]) links.set(addr, new Link(addr));
}

function linkOf(group) {
  return links.get(slots ? slots.addressOf(chanPrefix + group) : opts.redis);
}

// A reply (a RESP integer or error) or an API answer ({status, body}) for counter c.
function counted(c, r) {
  c.replies++;
  if (r instanceof Error || (r.status !== undefined && r.status !== 200)) c.errors++;
  else if (typeof r === 'number') {
    c.receivers += r;
    if (r === 0) c.zero++;
  }
  if (c.finished && c.replies === c.published) c.done();
}

const api = opts.api ? splitUrl(opts.api) : null;
const apiHost = api ? `${api.host}:${api.port}` : '';

function apiPool(conns, depth) {
  return new Pool({
    host: api.host, port: api.port, conns, depth, makeParser: () => new HttpResponseParser(),
    onError: (err) => fail('api', err),
  });
}

function redisPool(conns, depth, group) {
  const { host, port } = splitHostPort(linkOf(group).addr);
  return new Pool({
    host, port, conns, depth, makeParser: () => new RespParser(), onError: (err) => fail('redis', err),
  });
}

let pool = null; // the API connections of rate/once/probe, opened at the first command
function publishCmd(group, payload) {
  const ch = chanPrefix + group;
  return `*3\r\n$${verb.length}\r\n${verb}\r\n$${ch.length}\r\n${ch}\r\n$${payload.length}\r\n${payload}\r\n`;
}

function apiPublish(group, payload) {
  return httpRequest('POST', `/api/groups/g${group}`, apiHost, opts['api-key'], payload);
}

// Publish one message to g<group> the --via way; its reply goes to counter c.
// Redis: appended to its connection's pending output (write() sends it, pipelined); the API:
// submitted to the pool.
function publish(c, group, payload, out) {
  c.published++;
  if (via === 'redis') {
    const link = linkOf(group);
    link.fifo.push(c);
    link.pending += publishCmd(group, payload);
    return out;
  }
  if (pool === null) pool = apiPool(opts.conns, opts.depth);
  pool.submit(apiPublish(group, payload), (answer) => counted(c, answer));
  return out;
}

function write() {
  for (const link of links.values()) link.flush();
}

function counter(step, resolve) {
  const c = { step, published: 0, replies: 0, receivers: 0, zero: 0, errors: 0, finished: false, t0: 0, t1: 0 };
  c.done = () => resolve(c);
  return c;
}

function finish(c) {
  c.finished = true;
  if (c.replies === c.published) c.done();
}

function report(c, extra) {
  const redis = (extra.via || via) === 'redis';
  emit({
    event: 'done', step: c.step, published: c.published, ok: c.replies - c.errors,
    receivers: redis ? c.receivers : null, zero: redis ? c.zero : null,
    errors: c.errors, t0: c.t0, t1: c.t1, cpu: cpuUs(), reconnects: pool === null ? 0 : pool.reconnects, ...extra,
  });
}

function rate(cmd) {
  return new Promise((resolve) => {
    const c = counter(cmd.step, resolve);
    const total = Math.max(1, Math.round(cmd.rate * cmd.seconds));
    const groups = Math.max(1, cmd.groups);
    const perGroup = new Array(groups).fill(0);
    c.perGroup = perGroup;
    const pad = padding(cmd.size, `M${cmd.step},${nowUs()},`.length);
    c.t0 = nowUs();
    const tick = () => {
      const now = nowUs();
      const due = Math.min(total, Math.floor(((now - c.t0) * cmd.rate) / 1e6) + 1);
      let out = '';
      while (c.published < due) {
        const g = c.published % groups;
        perGroup[g]++;
        out = publish(c, g, `M${cmd.step},${now},${pad}`, out);
      }
      write(out);
      if (c.published < total) setTimeout(tick, opts.tick);
      else {
        c.t1 = nowUs();
        finish(c);
      }
    };
    tick();
  }).then((c) => report(c, { perGroup: c.perGroup }));
}

function once(cmd) {
  return new Promise((resolve) => {
    const c = counter(cmd.step, resolve);
    const now = nowUs();
    const head = `M${cmd.step},${now},`;
    c.t0 = now;
    c.t1 = now;
    write(publish(c, cmd.group, head + padding(cmd.size, head.length), ''));
    finish(c);
  }).then((c) => report(c, {}));
}

function probe(cmd) {
  return new Promise((resolve) => {
    const c = counter(-1, resolve);
    c.t0 = nowUs();
    let out = '';
    for (const g of cmd.groups) out = publish(c, g, `P${cmd.id},${c.t0},`, out);
    write(out);
    finish(c);
  }).then((c) => report(c, { id: cmd.id }));
}

// Closed loop: each of conns x depth slots publishes again as soon as its answer
// is in, until `seconds` are over; then the last answers are awaited (bounded by
// the orchestrator's timeout). The answers' round-trip times go in `rtt`.
function flood(cmd) {
  return new Promise((resolve) => {
    const c = counter(cmd.step, resolve);
    const redis = cmd.via === 'redis';
    const p = redis ? redisPool(cmd.conns, cmd.depth, cmd.group) : apiPool(cmd.conns, cmd.depth);
    const rtt = new Step();
    const pad = padding(cmd.size, `M${cmd.step},${nowUs()},`.length);
    c.t0 = nowUs();
    const end = c.t0 + cmd.seconds * 1e6;
    const next = () => {
      const now = nowUs();
      const payload = `M${cmd.step},${now},${pad}`;
      const request = redis ? publishCmd(cmd.group, payload) : apiPublish(cmd.group, payload);
      c.published++;
      p.submit(request, (answer) => {
        const t = nowUs();
        rtt.add(t - now, t);
        if (t < end) next();
        else if (c.t1 === 0) {
          c.t1 = t;
          finish(c);
        }
        counted(c, answer);
      });
    };
    for (let i = 0; i < Math.max(1, cmd.conns) * Math.max(1, cmd.depth); i++) next();
    c.pool = p;
    c.rtt = rtt;
  }).then((c) => {
    c.pool.close();
    report(c, {
      via: cmd.via, conns: cmd.conns, depth: cmd.depth, t1: c.rtt.last, rtt: c.rtt.toJSON(),
      reconnects: c.pool.reconnects,
    });
  });
}

onCommands((cmd) => {
  if (cmd.cmd === 'rate') return rate(cmd);
  if (cmd.cmd === 'once') return once(cmd);
  if (cmd.cmd === 'probe') return probe(cmd);
  if (cmd.cmd === 'flood') return flood(cmd);
  throw new Error(`unknown command ${cmd.cmd}`);
}, () => process.exit(0));

if (links.size) {
  let up = 0;
  for (const link of links.values()) link.sock.on('connect', () => {
    if (++up === links.size) emit({ event: 'ready' });
  });
} else emit({ event: 'ready' }); // the API connections open at the first command
