// Peer job queues (BullMQ, pg-boss, graphile-worker) measured with one method; see README.md.
//
//   scripts/bench-peers-install && node bench/peers/run.mjs --peer all --scenario all
//
// The packages live outside the clone, in the directory scripts/bench-peers-install fills
// (RUNLEDGER_PEERS_DIR, default ~/.cache/runledger/peers). ESM resolution ignores NODE_PATH, so
// they are loaded with createRequire anchored at that directory's package.json (all three peers
// ship CommonJS). One JSON object per (peer, scenario) goes to stdout; everything else to stderr.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const PEERS_DIR = process.env.RUNLEDGER_PEERS_DIR || join(homedir(), '.cache/runledger/peers');
if (!existsSync(join(PEERS_DIR, 'node_modules'))) {
  console.error(`no packages in ${PEERS_DIR}; run scripts/bench-peers-install first`);
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const lock = join(here, 'package-lock.json');
const stamp = join(PEERS_DIR, '.installed-lock');
if (existsSync(lock) && (!existsSync(stamp) || readFileSync(lock, 'utf8') !== readFileSync(stamp, 'utf8'))) {
  console.error(`warning: ${PEERS_DIR} is not installed from this package-lock.json; rerun scripts/bench-peers-install`);
}
const require = createRequire(join(PEERS_DIR, 'package.json'));
const version = (pkg) => JSON.parse(readFileSync(join(PEERS_DIR, 'node_modules', pkg, 'package.json'), 'utf8')).version;

const { values: opt } = parseArgs({
  options: {
    peer: { type: 'string', default: 'all' },
    scenario: { type: 'string', default: 'all' },
    jobs: { type: 'string', default: '20000' },
    rate: { type: 'string', default: '500' },
    seconds: { type: 'string', default: '10' },
    // Cap on waiting for completions, so a peer that cannot keep up still ends.
    timeout: { type: 'string', default: '600' },
    // pg-boss's fetch size: its loop waits 0.5 s after every fetch, so at 32 it cannot pass
    // 64 jobs/s; the reference figures used a batch fetch (pg-boss's own way to scale).
    'pgboss-batch': { type: 'string', default: '1000' },
  },
});
const N = Number(opt.jobs), R = Number(opt.rate), S = Number(opt.seconds), TIMEOUT_MS = Number(opt.timeout) * 1000;
const INFLIGHT = 32, CONCURRENCY = 32, USERS = 8, QUEUE = 'bench', PGBOSS_BATCH = Number(opt['pgboss-batch']);
const ADMIN_URL = process.env.ADMIN_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const log = (...a) => console.error('[peers]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- CPU accounting from /proc (ms). cutime/cstime are included so that the CPU of children
// that exit during the run (Postgres backends, a Redis rewrite child) still counts, via the
// parent that reaped them.
const TICK_MS = 1000 / Number(execFileSync('getconf', ['CLK_TCK']).toString().trim() || 100);
function procCpu(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // fields from #3 (state) on
    return { comm: s.slice(s.indexOf('(') + 1, s.lastIndexOf(')')), ms: (+f[11] + +f[12] + +f[13] + +f[14]) * TICK_MS };
  } catch {
    return null; // gone
  }
}
function postgresCpu() {
  const m = new Map();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const p = procCpu(pid);
    if (p && p.comm === 'postgres') m.set(pid, p.ms);
  }
  return m;
}
// A backend that exited since `before` moved its whole CPU into the postmaster's cutime, so
// what it had used before the mark is taken off again.
function postgresCpuMark() {
  const before = postgresCpu();
  return () => {
    const after = postgresCpu();
    let ms = 0;
    for (const [pid, v] of after) ms += v - (before.get(pid) ?? 0);
    for (const [pid, v] of before) if (!after.has(pid)) ms -= v;
    return ms;
  };
}

// ---- Clean slates: a Redis of our own, a fresh Postgres database.
const cleanups = [];
let cleaning = null; // one teardown at a time, shared by a signal and the run it interrupts
function runCleanups() {
  return (cleaning ??= (async () => {
    while (cleanups.length) await cleanups.pop()().catch((e) => log('cleanup failed:', e.message));
  })().finally(() => { cleaning = null; }));
}
for (const [sig, n] of [['SIGINT', 2], ['SIGTERM', 15]]) process.on(sig, () => runCleanups().finally(() => process.exit(128 + n)));

const portFree = (port) => new Promise((r) => {
  const s = createServer().once('error', () => r(false)).listen(port, '127.0.0.1', () => s.close(() => r(true)));
});
async function startRedis() {
  let port = 16390;
  while (!(await portFree(port))) port++;
  const dir = mkdtempSync(join(tmpdir(), 'rl-peers-redis-'));
  const child = spawn(process.env.REDIS_SERVER || 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--daemonize', 'no'], { stdio: 'ignore' });
  const exited = new Promise((r) => child.once('exit', r).once('error', r)); // 'error': did not spawn
  cleanups.push(async () => { child.kill('SIGTERM'); await exited; rmSync(dir, { recursive: true, force: true }); });
  const Redis = require('ioredis');
  for (let i = 0; ; i++) {
    const c = new Redis({ port, lazyConnect: true, retryStrategy: null }).on('error', () => {}); // probe
    try { await c.connect(); await c.ping(); c.disconnect(); break; } catch (e) {
      c.disconnect();
      if (i > 50 || child.exitCode !== null) throw new Error(`redis-server on ${port} did not start: ${e.message}`);
      await sleep(100);
    }
  }
  const cpu = () => procCpu(child.pid)?.ms ?? 0;
  return { port, cpuMark: () => { const base = cpu(); return () => cpu() - base; } };
}

let dbSeq = 0;
async function freshDatabase(tag) {
  const { Client } = require('pg');
  const name = `rl_bench_peers_${tag}_${process.pid}_${dbSeq++}`;
  const admin = async (sql) => { const c = new Client({ connectionString: ADMIN_URL }); await c.connect(); try { return await c.query(sql); } finally { await c.end(); } };
  await admin(`CREATE DATABASE ${name}`);
  cleanups.push(async () => {
    // pg's Pool.end() resolves before its connections have closed; give them a moment, so that
    // FORCE only has to end connections a peer really left behind.
    for (let i = 0; i < 30 && (await admin(`SELECT 1 FROM pg_stat_activity WHERE datname = '${name}'`)).rowCount; i++) await sleep(100);
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
  const u = new URL(ADMIN_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

// ---- Peers. Each sets up its worker and completion watcher, calling onDone(id) per completed
// job, registers its own teardown in `cleanups` as soon as there is something to tear down, and
// returns { system, enqueue(data) -> id, cpuMark() -> (() -> server CPU ms since the mark) }.
const peers = {
  async bullmq(onDone) {
    const { Queue, Worker, QueueEvents } = require('bullmq');
    const redis = await startRedis();
    const connection = { host: '127.0.0.1', port: redis.port };
    // The events stream is trimmed to ~10000 entries by default; with several events per job a
    // lagging reader would lose 'completed' events, so keep enough for the whole run.
    const queue = new Queue(QUEUE, { connection, streams: { events: { maxLen: 10 * Math.max(N, R * S) } } });
    const events = new QueueEvents(QUEUE, { connection, lastEventId: '0-0' }); // fresh Redis: no race with '$'
    events.on('completed', ({ jobId }) => onDone(jobId));
    const worker = new Worker(QUEUE, async () => {}, { connection, concurrency: CONCURRENCY });
    worker.on('error', (e) => log('bullmq worker:', e.message));
    cleanups.push(async () => { await worker.close(); await events.close(); await queue.close(); });
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady(), worker.waitUntilReady()]);
    return {
      system: `BullMQ ${version('bullmq')} (appendfsync always)`,
      enqueue: async (data) => (await queue.add('noop', data)).id,
      cpuMark: redis.cpuMark,
    };
  },

  async pgboss(onDone) {
    const PgBoss = require('pg-boss');
    // Pool (shared by send, work and maintenance) large enough for 32 sends in flight.
    const boss = new PgBoss({ connectionString: await freshDatabase('pgboss'), max: INFLIGHT + 8 });
    boss.on('error', (e) => log('pg-boss:', e.message));
    cleanups.push(() => boss.stop({ graceful: true, wait: true, timeout: 5000 }));
    await boss.start();
    await boss.createQueue(QUEUE);
    // pg-boss 10 has no teamSize and no completion notification (onComplete was removed). One
    // work() loop fetching batchSize 32 caps the jobs in flight at 32; the handler completes its
    // batch itself through the public complete() and reports done once that returned. pg-boss
    // then runs its own complete() for the batch, a no-op UPDATE (state is no longer 'active').
    // pollingIntervalSeconds 0.5 is the minimum: the loop waits out the interval after every
    // fetch, so throughput is bounded by batchSize / 0.5 s.
    await boss.work(QUEUE, { batchSize: PGBOSS_BATCH, pollingIntervalSeconds: 0.5 }, async (jobs) => {
      await Promise.all(jobs.map(async () => {})); // the noop handlers
      await boss.complete(QUEUE, jobs.map((j) => j.id));
      for (const j of jobs) onDone(j.id);
    });
    return {
      system: `pg-boss ${version('pg-boss')} (batch ${PGBOSS_BATCH})`,
      enqueue: (data) => boss.send(QUEUE, data),
      cpuMark: postgresCpuMark,
    };
  },

  async graphile(onDone) {
    const { run, makeWorkerUtils, Logger } = require('graphile-worker');
    const { Pool } = require('pg');
    const url = await freshDatabase('graphile');
    // graphile-worker logs every job at info level to stdout; keep stdout for results.
    const logger = new Logger(() => (level, msg) => { if (level === 'error' || level === 'warning') log('graphile:', msg); });
    // Our own pools: graphile ends pools it made without awaiting, after dropping their error
    // listener, so dropping the database right after would crash the process. The worker pool is
    // as large as the concurrency (graphile warns otherwise); the producer has its own, as large
    // as the enqueue calls in flight.
    const pool = (max) => {
      const p = new Pool({ connectionString: url, max }).on('error', (e) => log('graphile pool:', e.message));
      cleanups.push(() => p.end());
      return p;
    };
    const workerPool = pool(CONCURRENCY), producerPool = pool(INFLIGHT);
    // No queueName on jobs: a named graphile queue runs its jobs one at a time, so "one queue"
    // here is the one task.
    const runner = await run({ pgPool: workerPool, concurrency: CONCURRENCY, noHandleSignals: true, logger,
      taskList: { noop: async () => {} } });
    cleanups.push(() => runner.stop());
    // 'job:complete' fires once the result has been written back to the database.
    runner.events.on('job:complete', ({ job, error }) => { if (!error) onDone(job.id); });
    const utils = await makeWorkerUtils({ pgPool: producerPool, logger });
    cleanups.push(() => utils.release());
    return {
      system: `graphile-worker ${version('graphile-worker')}`,
      enqueue: async (data) => (await utils.addJob('noop', data)).id,
      cpuMark: postgresCpuMark,
    };
  },
};

// ---- Method.
function percentile(sorted, p) {
  if (!sorted.length) return null;
  const v = sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
  return Number.isFinite(v) ? +v.toFixed(1) : null; // a not-completed job is Infinity -> null
}

// An error thrown from a peer's connection outside any call (an 'error' event nobody listens
// to) ends the current (peer, scenario) as failed instead of the whole process.
let abortCurrent = null;
const onCrash = (e) => { log('uncaught:', e?.stack || e); abortCurrent?.(e); };
process.on('uncaughtException', onCrash);
process.on('unhandledRejection', onCrash);

async function measure(peerName, scenario) {
  const total = scenario === 'drain' ? N : Math.round(R * S);
  const started = new Array(total), ids = new Array(total), done = new Map();
  let wake = null, stop = false;
  const onDone = (id) => { if (!done.has(String(id))) { done.set(String(id), performance.now()); wake?.(); } };
  const lastDone = () => { let m = -Infinity; for (const t of done.values()) m = Math.max(m, t); return m; };
  const untilAllDone = (deadline) => new Promise((resolve) => {
    const check = () => {
      if (done.size < total && performance.now() < deadline && !stop) return;
      wake = null; clearTimeout(t); resolve(); // an enqueue error surfaces at `await enqueued`
    };
    const t = setTimeout(check, Math.max(0, deadline - performance.now()));
    wake = check; check();
  });

  const body = async () => {
    const peer = await peers[peerName](onDone);
    log(`${peer.system} ${scenario}: ${total} jobs`);
    const cpu0 = process.cpuUsage(), serverCpu = peer.cpuMark();
    const t0 = performance.now() + 50;
    let next = 0;
    // At most INFLIGHT enqueue calls at once, one call per job; in steady each waits its slot.
    const lane = async () => {
      for (let k = next++; k < total && !stop; k = next++) {
        if (scenario === 'steady') { const at = t0 + (k * 1000) / R; if (at > performance.now()) await sleep(at - performance.now()); }
        started[k] = performance.now();
        ids[k] = String(await peer.enqueue({ user: `u${k % USERS}` }));
      }
    };
    const enqueued = Promise.all(Array.from({ length: INFLIGHT }, lane));
    enqueued.catch(() => { stop = true; wake?.(); }); // stop waiting for completions
    const result = { system: peer.system, scenario };

    if (scenario === 'drain') {
      await enqueued;
      await untilAllDone(performance.now() + TIMEOUT_MS);
      const last = lastDone();
      Object.assign(result, { jobs: total, completed: done.size, jobs_per_s: +(done.size / ((last - started[0]) / 1000)).toFixed(1) });
      if (done.size < total) result.error = `only ${done.size}/${total} completed within ${opt.timeout}s`;
    } else {
      const windowEnd = t0 + S * 1000;
      await untilAllDone(windowEnd + 2000);
      const drainedInTime = done.size >= total && lastDone() <= windowEnd + 2000;
      await enqueued;
      await untilAllDone(performance.now() + TIMEOUT_MS); // the rest, for the latency tail
      const inWindow = [...done.values()].filter((t) => t <= windowEnd).length;
      const achieved = inWindow / S;
      const lat = ids.map((id, k) => (done.has(id) ? done.get(id) - started[k] : Infinity)).sort((a, b) => a - b);
      // How late the producer got against the schedule (latency is counted from the actual call).
      const lag = started.reduce((m, t, k) => Math.max(m, t - (t0 + (k * 1000) / R)), 0);
      Object.assign(result, { rate: R, seconds: S, jobs: total, completed: done.size, achieved_per_s: +achieved.toFixed(1),
        p50_ms: percentile(lat, 50), p95_ms: percentile(lat, 95), p99_ms: percentile(lat, 99),
        held: achieved >= 0.97 * R && drainedInTime, max_enqueue_lag_ms: +lag.toFixed(1) });
    }
    // Read CPU before stopping: closing connections ends the backends being measured.
    const c = process.cpuUsage(cpu0);
    const cpuMs = (c.user + c.system) / 1000 + serverCpu();
    result.cpu_ms_per_job = done.size ? +(cpuMs / done.size).toFixed(3) : null;
    return result;
  };

  const crashed = new Promise((_, reject) => { abortCurrent = reject; });
  try {
    return await Promise.race([body(), crashed]);
  } finally {
    abortCurrent = null;
    stop = true; // a crashed body's lanes and waits wind down
    wake?.();
    await runCleanups();
  }
}

const pick = (v, all) => (v === 'all' ? all : v.split(','));
const peerNames = pick(opt.peer, Object.keys(peers)), scenarios = pick(opt.scenario, ['drain', 'steady']);
for (const p of peerNames) if (!peers[p]) { console.error(`unknown peer ${p}`); process.exit(2); }
for (const s of scenarios) if (!['drain', 'steady'].includes(s)) { console.error(`unknown scenario ${s}`); process.exit(2); }

let failed = false;
for (const p of peerNames) {
  for (const s of scenarios) {
    try {
      const r = await measure(p, s);
      if (r.error) failed = true;
      console.log(JSON.stringify(r));
    } catch (e) {
      failed = true;
      log(`${p} ${s} failed:`, e.stack || e.message);
      console.log(JSON.stringify({ system: p, scenario: s, error: e.message }));
    }
  }
}
process.exit(failed ? 1 : 0);
