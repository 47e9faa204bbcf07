'use strict';
// Benchmark publisher: PUBLISHes timestamped messages to PREFIXgroup-data:g<N>
// at a paced rate, pipelined (every 1 ms tick writes all messages due by then).
//
// usage: node publisher.js --redis 127.0.0.1:6380 --prefix ws-hub:
// commands (JSON lines on stdin), each answered by one {"event":"done",...}:
//   {"cmd":"rate","step":S,"rate":R,"seconds":T,"groups":G,"size":B}  R msg/s, round-robin over g0..g(G-1)
//   {"cmd":"once","step":S,"group":N,"size":B}                       one message to gN
//   {"cmd":"probe","id":I,"groups":[N,...]}                          'P<I>,' to each listed group
// Each answer carries the number of PUBLISHes, the sum of Redis' receiver counts
// (subscribers that got them) and how many reached no subscriber at all.

const net = require('net');
const { nowUs, emit, onCommands, cpuUs, parseArgs, RespParser, splitHostPort } = require('./common');

const opts = parseArgs(process.argv.slice(2), { redis: '127.0.0.1:6379', prefix: 'ws-hub:', tick: 1 });
const { host, port } = splitHostPort(opts.redis);
const chanPrefix = `${opts.prefix}group-data:g`;

const sock = net.createConnection({ host, port });
sock.setNoDelay(true);
sock.on('error', (err) => {
  emit({ event: 'error', error: `redis: ${err.message}` });
  process.exit(1);
});

// One counter object per command; replies come back in order, so a FIFO of
// counters (one entry per PUBLISH) tells whose reply each one is.
const fifo = [];
let head = 0;
const parser = new RespParser();
sock.on('data', (chunk) => {
  for (const r of parser.feed(chunk)) {
    const c = fifo[head];
    fifo[head++] = undefined;
    if (head > 65536) {
      fifo.splice(0, head);
      head = 0;
    }
    if (c === undefined) continue;
    c.replies++;
    if (r instanceof Error) c.errors++;
    else {
      c.receivers += r;
      if (r === 0) c.zero++;
    }
    if (c.finished && c.replies === c.published) c.done();
  }
});

function publishCmd(group, payload) {
  const ch = chanPrefix + group;
  return `*3\r\n$7\r\nPUBLISH\r\n$${ch.length}\r\n${ch}\r\n$${payload.length}\r\n${payload}\r\n`;
}

function padding(size, headLen) {
  return size > headLen ? 'x'.repeat(size - headLen) : '';
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
  emit({
    event: 'done', step: c.step, published: c.published, receivers: c.receivers, zero: c.zero,
    errors: c.errors, t0: c.t0, t1: c.t1, cpu: cpuUs(), ...extra,
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
        out += publishCmd(g, `M${cmd.step},${now},${pad}`);
        perGroup[g]++;
        fifo.push(c);
        c.published++;
      }
      if (out) sock.write(out);
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
    fifo.push(c);
    c.published = 1;
    sock.write(publishCmd(cmd.group, head + padding(cmd.size, head.length)));
    finish(c);
  }).then((c) => report(c, {}));
}

function probe(cmd) {
  return new Promise((resolve) => {
    const c = counter(-1, resolve);
    c.t0 = nowUs();
    let out = '';
    for (const g of cmd.groups) {
      out += publishCmd(g, `P${cmd.id},${c.t0},`);
      fifo.push(c);
      c.published++;
    }
    if (out) sock.write(out);
    finish(c);
  }).then((c) => report(c, { id: cmd.id }));
}

let ready = false;
sock.on('connect', () => {
  ready = true;
  emit({ event: 'ready' });
});

onCommands((cmd) => {
  if (!ready) throw new Error('not connected yet');
  if (cmd.cmd === 'rate') return rate(cmd);
  if (cmd.cmd === 'once') return once(cmd);
  if (cmd.cmd === 'probe') return probe(cmd);
  throw new Error(`unknown command ${cmd.cmd}`);
}, () => process.exit(0));
