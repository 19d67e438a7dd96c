// B9: the seed-style live baseline - a Node.js socket.io@4 server that takes the same
// events over HTTP (POST /api/v1/events, one event or an array) and broadcasts each one
// to a room per build. In memory only (no database, no auth): the cheapest honest
// "receive, then io.to(room).emit" fan-out.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 0);
let nextId = 0;
const seqs = new Map();

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/v1/events') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try { body = JSON.parse(Buffer.concat(chunks)); } catch { res.writeHead(400).end(); return; }
      const list = Array.isArray(body) ? body : [body];
      const out = [];
      for (const e of list) {
        const seq = (seqs.get(e.runId) || 0) + 1;
        seqs.set(e.runId, seq);
        const ev = { ...e, id: ++nextId, seq, receivedAt: new Date().toISOString() };
        io.to(e.runId).emit('update', ev, { buildId: e.runId });
        out.push({ runId: e.runId, status: 'stored', id: ev.id, seq });
      }
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ events: out }));
    });
    return;
  }
  if (req.url === '/healthz') { res.writeHead(200).end('ok'); return; }
  res.writeHead(404).end();
});

const io = new Server(server, { serveClient: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (msg, ack) => {
    socket.join(msg.buildId);
    if (typeof ack === 'function') ack({ ok: true, buildId: msg.buildId });
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stderr.write(`b9 listening on http://127.0.0.1:${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
