'use strict';
// B1: the seed's design. A Fastify server that stores each event with exactly one
// PostgreSQL INSERT (autocommit, so one commit per event) and answers after it returns.
// Accepts one JSON event per request (the load generator's shape) or an array, which it
// inserts one row at a time. No state machine, no dedup, no auth lookup: this is the
// cheapest honest version of "one INSERT per event".
//
//   DATABASE_URL=postgres://... PORT=... [PG_POOL_MAX=16] node server.js

const fastify = require('fastify')({ logger: false, bodyLimit: 1024 * 1024 });
const { Pool } = require('pg');

const pool = new Pool({
  connectionString: process.env.DATABASE_URL,
  // Kiln's PostgreSQL pool also holds 16 connections.
  max: Number(process.env.PG_POOL_MAX || 16),
});

const SCHEMA = `
CREATE TABLE IF NOT EXISTS events (
  id BIGSERIAL PRIMARY KEY,
  run_id TEXT NOT NULL,
  event TEXT NOT NULL,
  event_id TEXT,
  stage TEXT,
  host TEXT,
  pid BIGINT,
  command TEXT,
  progress DOUBLE PRECISION,
  received_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`;

const INSERT =
  'INSERT INTO events (run_id, event, event_id, stage, host, pid, command, progress) ' +
  'VALUES ($1, $2, $3, $4, $5, $6, $7, $8)';

function insertOne(e) {
  return pool.query(INSERT, [
    e.runId, e.event, e.eventId ?? null, e.stage ?? null, e.host ?? null,
    e.pid ?? null, e.command ?? null, e.progress ?? null,
  ]);
}

fastify.get('/healthz', async () => ({ ok: true }));

fastify.post('/api/v1/events', async (request, reply) => {
  const events = Array.isArray(request.body) ? request.body : [request.body];
  for (const e of events) {
    if (!e || typeof e.runId !== 'string' || typeof e.event !== 'string') {
      return reply.code(400).send({ error: 'runId and event are required' });
    }
  }
  for (const e of events) {
    await insertOne(e);
  }
  return reply.code(201).send({ stored: events.length });
});

async function main() {
  await pool.query(SCHEMA);
  await fastify.listen({ host: '127.0.0.1', port: Number(process.env.PORT || 3000) });
  process.stderr.write(`baseline-fastify listening on ${process.env.PORT || 3000}\n`);
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    fastify.close().then(() => pool.end()).then(() => process.exit(0));
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
