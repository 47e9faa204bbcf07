'use strict';
// Benchmark listener through the hub's HTTP API (the memory broker has no Redis
// to listen on): reads GET /api/events and answers every client-new with
// PUT /api/keys/KEY/groups, the key's groups as JSON. Keys are 'k<INDEX>' (see
// loadgen.js) and belong to group 'g<INDEX % GROUPS>', as in listener.js. The
// answers go over --conns keep-alive connections, at most --depth in flight on
// each (pipelined: a burst of client-new costs few writes); "answered" counts
// the 200s, so once it reaches the number of clients the hub has applied every
// answer.
//
// usage: node api_listener.js --api http://127.0.0.1:8080 --api-key K --groups 10 [--conns 2] [--depth 16]
// stdout: {"event":"ready"} once the event stream is open; {"event":"stats",...} on
// {"cmd":"stats"}; exits when stdin closes.

const http = require('http');
const { emit, onCommands, cpuUs, parseArgs, splitUrl, HttpResponseParser, httpRequest, Pool } = require('./common');

const opts = parseArgs(process.argv.slice(2), { api: '', 'api-key': '', groups: 1, conns: 2, depth: 16 });
const groups = Math.max(1, opts.groups);
const { host, port } = splitUrl(opts.api);
const hostHeader = `${host}:${port}`;

let events = 0;
let answered = 0;
let replies = 0;
let errors = 0;

function fail(what, err) {
  emit({ event: 'error', error: `${what}: ${err.message}` });
  process.exit(1);
}

function groupsOf(key) {
  const m = /^k(\d+)$/.exec(key);
  const i = m ? Number(m[1]) : 0;
  return `["g${i % groups}"]`;
}

const pool = new Pool({
  host, port, conns: opts.conns, depth: opts.depth, makeParser: () => new HttpResponseParser(),
  onError: (err) => fail('api', err),
});

function onAnswer(answer) {
  replies++;
  if (answer.status === 200) answered++;
  else errors++;
}

// Server-Sent Events: "event: NAME" and "data: JSON" lines, a blank line ends
// one event; lines starting with ':' are comments (the hub's greeting and pings).
let rest = '';
let eventName = '';
let data = '';
function onStream(text) {
  const lines = (rest + text).split('\n');
  rest = lines.pop();
  for (const line of lines) {
    if (line === '') {
      if (eventName === 'client-new') {
        const key = JSON.parse(data).key;
        pool.submit(httpRequest('PUT', `/api/keys/${encodeURIComponent(key)}/groups`, hostHeader, opts['api-key'],
          groupsOf(key)), onAnswer);
      }
      if (eventName) events++;
      eventName = '';
      data = '';
    } else if (line.startsWith('event: ')) eventName = line.slice(7);
    else if (line.startsWith('data: ')) data = line.slice(6);
  }
}

const req = http.get({
  host, port, path: '/api/events', headers: { authorization: `Bearer ${opts['api-key']}` }, agent: false,
}, (res) => {
  if (res.statusCode !== 200) fail('api', new Error(`GET /api/events answered ${res.statusCode}`));
  res.setEncoding('utf8');
  let first = true;
  res.on('data', (text) => {
    if (first) {
      first = false;
      emit({ event: 'ready' });
    }
    onStream(text);
  });
  res.on('end', () => fail('api', new Error('the event stream ended')));
});
req.on('error', (err) => fail('api', err));

onCommands((cmd) => {
  if (cmd.cmd === 'stats') emit({ event: 'stats', answered, replies, errors, events, cpu: cpuUs() });
}, () => process.exit(0));
