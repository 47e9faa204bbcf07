'use strict';
// Node reference peer for side-by-side benchmarks: the WS-Hub protocol on `ws` + `ioredis`.
//
// What a Node developer writes with the two usual libraries (issue 13 compares
// WS-Hub's connect CPU with it): one process, one http.Server whose 'upgrade'
// checks the path and key and hands the socket to a `ws` WebSocketServer
// ({ noServer: true }), one ioredis connection in subscriber mode and one for
// PUBLISH (ioredis pipelines the commands of one tick by itself), a Set of
// sockets per group, and the ping/terminate heartbeat of ws' README.
//
// Protocol (same as WS-Hub and bench/peer_websockets.py, see docs/protocol.md):
// 1. GET PATH?KEYPARAM=KEY upgrades; the peer SUBSCRIBEs PREFIXgroups-new:KEY and,
//    once Redis confirms it, PUBLISHes KEY on PREFIXclient-new.
// 2. An answer on groups-new:KEY (JSON array or comma list) replaces the key's groups;
//    PREFIXgroup-data:G is SUBSCRIBEd once while G has members.
// 3. PREFIXgroup-data:G goes to G's members (text if valid UTF-8, else binary).
// 4. Client messages are PUBLISHed to PREFIXclient-data:KEY; when a key's last
//    connection closes, KEY is PUBLISHed on PREFIXclient-gone.
//
// usage: node bench/peer_node.js --address 127.0.0.1:8082 --redis 127.0.0.1:6379 --prefix ws-hub:
//        [--client-key session_key] [--path /ws] [--pong-wait 60] [--max-message-size 65536] [--compression 0|1]

const http = require('http');
const { isUtf8 } = require('buffer');
const Redis = require('ioredis');
const { WebSocketServer, WebSocket } = require('ws');
const { parseArgs, splitHostPort } = require('./common');

const opts = parseArgs(process.argv.slice(2), {
  address: '127.0.0.1:8082', redis: '127.0.0.1:6379', prefix: 'ws-hub:', 'client-key': 'session_key',
  path: '/ws', 'pong-wait': 60, 'max-message-size': 65536, compression: 0,
});
const prefix = opts.prefix;
const groupPrefix = `${prefix}group-data:`;
const keyPrefix = `${prefix}groups-new:`;

const redisAddr = splitHostPort(opts.redis);
const pub = new Redis({ host: redisAddr.host, port: redisAddr.port });
const sub = new Redis({ host: redisAddr.host, port: redisAddr.port });

const members = new Map(); // group-data channel -> Set of sockets
const keyConns = new Map(); // groups-new channel -> Set of sockets
const groupsOf = new Map(); // socket -> Set of group-data channels
const keySubscribed = new Map(); // groups-new channel -> Promise of its SUBSCRIBE

// The answer's format is the protocol's (wshub_core.parse_groups): a JSON array of strings, or a,b,c.
function parseGroups(text) {
  text = text.trim();
  if (text.startsWith('[')) {
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      return null;
    }
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) return null;
    return new Set(value.filter(Boolean));
  }
  if (text.startsWith('{') || text.startsWith('"')) return null;
  return new Set(text.split(',').map((s) => s.trim()).filter(Boolean));
}

function leave(channel, ws) {
  const set = members.get(channel);
  if (set === undefined) return;
  set.delete(ws);
  if (set.size === 0) {
    members.delete(channel);
    sub.unsubscribe(channel);
  }
}

function setGroups(keyChannel, payload) {
  const groups = isUtf8(payload) ? parseGroups(payload.toString()) : null;
  if (groups === null) {
    console.error(`ignored groups for ${keyChannel}: ${payload.subarray(0, 100)}`);
    return;
  }
  const channels = new Set([...groups].map((g) => groupPrefix + g));
  for (const ws of keyConns.get(keyChannel) || []) {
    const old = groupsOf.get(ws) || new Set();
    for (const ch of channels) {
      if (old.has(ch)) continue;
      let set = members.get(ch);
      if (set === undefined) {
        set = new Set();
        members.set(ch, set);
        sub.subscribe(ch);
      }
      set.add(ws);
    }
    for (const ch of old) if (!channels.has(ch)) leave(ch, ws);
    groupsOf.set(ws, channels);
  }
}

sub.on('messageBuffer', (channelBuf, data) => {
  const channel = channelBuf.toString();
  const conns = members.get(channel);
  if (conns !== undefined) {
    const binary = !isUtf8(data);
    for (const ws of conns) if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary });
  } else if (channel.startsWith(keyPrefix)) {
    setGroups(channel, data);
  }
});

const wss = new WebSocketServer({
  noServer: true,
  maxPayload: opts['max-message-size'],
  perMessageDeflate: opts.compression ? { serverNoContextTakeover: true, clientNoContextTakeover: true } : false,
});

wss.on('connection', (ws, req, key) => {
  const keyChannel = keyPrefix + key;
  const dataChannel = `${prefix}client-data:${key}`;
  let siblings = keyConns.get(keyChannel);
  if (siblings === undefined) {
    siblings = new Set();
    keyConns.set(keyChannel, siblings);
  }
  siblings.add(ws);
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (data) => pub.publish(dataChannel, data));
  ws.on('error', () => ws.terminate());
  ws.on('close', () => {
    siblings.delete(ws);
    for (const ch of groupsOf.get(ws) || []) leave(ch, ws);
    groupsOf.delete(ws);
    if (siblings.size === 0) {
      keyConns.delete(keyChannel);
      keySubscribed.delete(keyChannel);
      sub.unsubscribe(keyChannel);
      pub.publish(`${prefix}client-gone`, key);
    }
  });
  // Announce only once Redis has confirmed the key's subscription, so the listener's answer is not lost.
  let subscribed = keySubscribed.get(keyChannel);
  if (subscribed === undefined) {
    subscribed = sub.subscribe(keyChannel);
    keySubscribed.set(keyChannel, subscribed);
  }
  subscribed.then(() => {
    if (ws.readyState === WebSocket.OPEN) pub.publish(`${prefix}client-new`, key);
  });
});

const server = http.createServer((req, res) => {
  res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  const key = url.searchParams.get(opts['client-key']);
  if (url.pathname !== opts.path || !key) {
    const status = url.pathname !== opts.path ? '404 Not Found' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req, key));
});

// ws' README heartbeat: ping every 0.9 x pong-wait, terminate who did not answer the last one.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, opts['pong-wait'] * 900);

function shutdown() {
  clearInterval(heartbeat);
  for (const ws of wss.clients) ws.terminate();
  server.close();
  pub.disconnect();
  sub.disconnect();
  setTimeout(() => process.exit(0), 100).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

const { host, port } = splitHostPort(opts.address);
sub.once('ready', () => {
  server.listen({ host, port, backlog: 4096 }, () => console.error(`listening on ${opts.address}`));
});
