'use strict';
// Upstream subscriber: PSUBSCRIBEs PREFIXclient-data:* and records, per step,
// the latency from the client's send (timestamp in the payload, see loadgen.js)
// to the message's arrival here.
//
// usage: node subscriber.js --redis 127.0.0.1:6380 --prefix ws-hub:
// stdout: {"event":"ready"}; {"cmd":"report"} -> {"event":"report","steps":{...},"cpu":{...}}

const net = require('net');
const { nowUs, Steps, parseHead, emit, onCommands, cpuUs, parseArgs, encodeCommand, RespParser, splitHostPort } =
  require('./common');

const opts = parseArgs(process.argv.slice(2), { redis: '127.0.0.1:6379', prefix: 'ws-hub:' });
const { host, port } = splitHostPort(opts.redis);
const steps = new Steps();
let other = 0;

const sock = net.createConnection({ host, port });
sock.setNoDelay(true);
const parser = new RespParser();
sock.on('connect', () => sock.write(encodeCommand(['PSUBSCRIBE', `${opts.prefix}client-data:*`])));
sock.on('error', (err) => {
  emit({ event: 'error', error: `redis: ${err.message}` });
  process.exit(1);
});
sock.on('data', (chunk) => {
  const now = nowUs();
  for (const r of parser.feed(chunk)) {
    if (!Array.isArray(r)) continue;
    if (r.length === 4) {
      const [kind, step, t] = parseHead(r[3]);
      if (kind === 85) steps.get(step).add(now - t, now); // 'U'
      else other++;
    } else if (r[0].toString() === 'psubscribe') {
      emit({ event: 'ready' });
    }
  }
});

onCommands((cmd) => {
  if (cmd.cmd === 'report') emit({ event: 'report', steps: steps.take(), other, cpu: cpuUs() });
}, () => process.exit(0));
