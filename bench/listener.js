'use strict';
// Benchmark listener: answers every PREFIXclient-new with the key's groups on
// PREFIXgroups-new:KEY. Keys are 'k<INDEX>' (see loadgen.js) and belong to group
// 'g<INDEX % GROUPS>'. All answers to one chunk of Redis input go out in one
// write (pipelined); replies to the PUBLISHes are read and counted, not awaited.
//
// usage: node listener.js --redis 127.0.0.1:6380 --prefix ws-hub: --groups 10
// stdout: {"event":"ready"} once SUBSCRIBE is confirmed; {"event":"stats",...} on
// {"cmd":"stats"}; exits when stdin closes.

const net = require('net');
const { emit, onCommands, cpuUs, parseArgs, encodeCommand, RespParser, splitHostPort } = require('./common');

const opts = parseArgs(process.argv.slice(2), { redis: '127.0.0.1:6379', prefix: 'ws-hub:', groups: 1 });
const { host, port } = splitHostPort(opts.redis);
const groups = Math.max(1, opts.groups);

let answered = 0;
let replies = 0;
let errors = 0;

function groupsOf(key) {
  const m = /^k(\d+)$/.exec(key);
  const i = m ? Number(m[1]) : 0;
  return `["g${i % groups}"]`;
}

const pub = net.createConnection({ host, port });
pub.setNoDelay(true);
const pubParser = new RespParser();
pub.on('data', (chunk) => {
  for (const r of pubParser.feed(chunk)) {
    replies++;
    if (r instanceof Error) errors++;
  }
});

const sub = net.createConnection({ host, port });
sub.setNoDelay(true);
const subParser = new RespParser();
const channel = `${opts.prefix}client-new`;
sub.on('connect', () => sub.write(encodeCommand(['SUBSCRIBE', channel])));
sub.on('data', (chunk) => {
  let out = '';
  for (const r of subParser.feed(chunk)) {
    if (!Array.isArray(r)) continue;
    const kind = r[0].toString();
    if (kind === 'subscribe') {
      emit({ event: 'ready' });
    } else if (kind === 'message') {
      const key = r[2].toString();
      out += encodeCommand(['PUBLISH', `${opts.prefix}groups-new:${key}`, groupsOf(key)]);
      answered++;
    }
  }
  if (out) pub.write(out);
});

for (const s of [pub, sub]) {
  s.on('error', (err) => {
    emit({ event: 'error', error: `redis: ${err.message}` });
    process.exit(1);
  });
}

onCommands((cmd) => {
  if (cmd.cmd === 'stats') emit({ event: 'stats', answered, replies, errors, cpu: cpuUs() });
}, () => process.exit(0));
