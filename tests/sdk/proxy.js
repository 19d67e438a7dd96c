// A tiny HTTP proxy in front of the real Kiln server, for fault injection only: each
// request is forwarded, delayed, answered with an error, or forwarded with its answer
// thrown away, as the test's `plan(n, request)` says (n counts requests from 1). The
// stored results are always read from the real server.

import { createServer, request as httpRequest } from 'node:http';

/**
 * plan(n, req) → one of:
 *   {forward: true}                     pass through
 *   {status: 503, body?}                answer without forwarding
 *   {delayMs, then?: <another action>}  wait, then do `then` (default: forward)
 *   {forwardAndDrop: true}              forward, let the server store it, then cut the connection
 *   {hang: true}                        never answer
 */
export async function startProxy(target, plan = () => ({ forward: true })) {
  let count = 0;
  const requests = [];
  const sockets = new Set();
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', async () => {
      count += 1;
      const body = Buffer.concat(chunks);
      const entry = { n: count, method: req.method, url: req.url, body: body.toString('utf8') };
      requests.push(entry);
      let action = plan(count, entry) ?? { forward: true };
      while (action.delayMs !== undefined) {
        await new Promise((resolve) => setTimeout(resolve, action.delayMs));
        action = action.then ?? { forward: true };
      }
      if (action.hang) return;
      if (action.status) {
        res.writeHead(action.status, { 'content-type': 'application/json', ...(action.headers ?? {}) });
        res.end(JSON.stringify(action.body ?? { error: { code: 'unavailable', message: 'injected by the test proxy' } }));
        return;
      }
      const upstream = httpRequest(
        `${target}${req.url}`,
        { method: req.method, headers: { ...req.headers, host: new URL(target).host } },
        (answer) => {
          const parts = [];
          answer.on('data', (chunk) => parts.push(chunk));
          answer.on('end', () => {
            entry.status = answer.statusCode;
            if (action.forwardAndDrop) {
              req.socket.destroy();
              return;
            }
            res.writeHead(answer.statusCode, answer.headers);
            res.end(Buffer.concat(parts));
          });
        },
      );
      upstream.on('error', () => res.destroy());
      upstream.end(body);
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A port nothing listens on (bound, then closed). */
export async function closedPortUrl() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}
