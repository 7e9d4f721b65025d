// Interoperability tests: the official JavaScript client (`socket.io-client` from npm)
// against a real `belfry-server` process.
//
// Run:  cd tests/interop && npm install && npm test
//
// The hub binary is taken from $BELFRY_SERVER_BIN, else
// `${CARGO_TARGET_DIR:-$HOME/.cache/belfry-target}/debug/belfry-server`. These tests do
// not build it. Everything listens on and talks to 127.0.0.1 only, and every wait is
// bounded in time.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm, access, constants as fsConstants } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';

const execFileP = promisify(execFile);

const SERVER_BIN =
  process.env.BELFRY_SERVER_BIN ||
  `${process.env.CARGO_TARGET_DIR || `${process.env.HOME}/.cache/belfry-target`}/debug/belfry-server`;

// Secrets must be at least 16 bytes.
const JWT_SECRET = 'interop-jwt-secret-0123456789abcdef';
const OTHER_JWT_SECRET = 'other-secret-long-enough';
const PUBLISH_KEY = 'interop-publish-key-0123456789abcdef';

const STARTUP_TIMEOUT_MS = 15_000;
const TEST_TIMEOUT_MS = 20_000;
const STEP_TIMEOUT_MS = 5_000;

// ---------------------------------------------------------------------------------------
// The hub process
// ---------------------------------------------------------------------------------------

const hub = {
  /** @type {import('node:child_process').ChildProcess | null} */
  child: null,
  dataDir: '',
  baseUrl: '',
  stdout: '',
  stderr: '',
};

/** The last lines the hub wrote, for failure messages. */
function hubLogTail(lines = 40) {
  // eslint-disable-next-line no-control-regex
  const tail = (text) => text.replace(/\x1b\[[0-9;]*m/g, '').split('\n').slice(-lines).join('\n');
  return `--- hub stdout (tail) ---\n${tail(hub.stdout)}\n--- hub stderr (tail) ---\n${tail(hub.stderr)}`;
}

/** Kills the hub synchronously (last resort when the test process itself exits). */
function killHubNow() {
  if (hub.child && hub.child.exitCode === null && hub.child.signalCode === null) {
    hub.child.kill('SIGKILL');
  }
}
process.on('exit', killHubNow);

async function startHub() {
  await access(SERVER_BIN, fsConstants.X_OK).catch(() => {
    throw new Error(
      `belfry-server binary not found or not executable at ${SERVER_BIN}; ` +
        'build it or set BELFRY_SERVER_BIN',
    );
  });
  hub.dataDir = await mkdtemp(join(tmpdir(), 'belfry-interop-'));
  const child = spawn(
    SERVER_BIN,
    [
      '--data-dir', hub.dataDir,
      '--listen', '127.0.0.1:0',
      '--publish-key', PUBLISH_KEY,
      '--jwt-secret', JWT_SECRET,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  hub.child = child;
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    hub.stderr += chunk;
  });

  hub.baseUrl = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`hub did not print its listening line within ${STARTUP_TIMEOUT_MS} ms\n${hubLogTail()}`));
    }, STARTUP_TIMEOUT_MS);
    const onData = (chunk) => {
      hub.stdout += chunk;
      const m = hub.stdout.match(/^belfry-server listening on (http:\/\/127\.0\.0\.1:(\d+))\s*$/m);
      if (m) {
        cleanup();
        resolve(m[1]);
      }
    };
    const onExit = (code, signal) => {
      cleanup();
      reject(new Error(`hub exited before listening (code ${code}, signal ${signal})\n${hubLogTail()}`));
    };
    const onError = (err) => {
      cleanup();
      reject(new Error(`cannot start the hub: ${err.message}`));
    };
    function cleanup() {
      clearTimeout(timer);
      child.stdout.off('data', onData);
      child.off('exit', onExit);
      child.off('error', onError);
      // Keep draining stdout so the hub never blocks on a full pipe.
      child.stdout.on('data', (c) => {
        hub.stdout += c;
      });
    }
    child.stdout.on('data', onData);
    child.once('exit', onExit);
    child.once('error', onError);
  });
}

async function stopHub() {
  const child = hub.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
  hub.child = null;
  if (hub.dataDir) {
    await rm(hub.dataDir, { recursive: true, force: true });
  }
}

/** Mints a user token with `belfry-server token`. */
async function mintToken(user, jwtSecret = JWT_SECRET) {
  const { stdout } = await execFileP(
    SERVER_BIN,
    ['token', '--data-dir', hub.dataDir, '--jwt-secret', jwtSecret, '--user', user],
    { timeout: STEP_TIMEOUT_MS },
  );
  const token = stdout.trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, `token command printed ${JSON.stringify(stdout)}`);
  return token;
}

/** Publishes over HTTP; returns the 201 body {id, created_at}. */
async function publishHttp(body) {
  const res = await fetch(`${hub.baseUrl}/api/v1/notifications`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${PUBLISH_KEY}`,
      'content-type': 'application/json',
    },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const text = await res.text();
  assert.equal(res.status, 201, `POST /api/v1/notifications ${JSON.stringify(body)} -> ${res.status} ${text}`);
  const reply = JSON.parse(text);
  assert.equal(typeof reply.id, 'number', `publish reply without a numeric id: ${text}`);
  return reply;
}

// ---------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------

/**
 * A socket.io-client socket that is NOT connected yet (autoConnect: false), so listeners
 * can be registered first. Each socket gets its own Manager (forceNew), never reconnects,
 * and its connection attempt is bounded.
 */
function makeSocket(nsp, opts = {}) {
  return io(`${hub.baseUrl}${nsp}`, {
    autoConnect: false,
    forceNew: true,
    reconnection: false,
    timeout: STEP_TIMEOUT_MS,
    ...opts,
  });
}

/**
 * Records every occurrence of the given events, in arrival order, and lets a test wait
 * (bounded) until a condition over what was recorded holds.
 */
function record(socket, events) {
  /** @type {{event: string, args: any[]}[]} */
  const log = [];
  const waiters = new Set();
  const check = () => {
    for (const w of [...waiters]) {
      let value;
      try {
        value = w.pred(log);
      } catch (e) {
        waiters.delete(w);
        clearTimeout(w.timer);
        w.reject(e);
        continue;
      }
      if (value) {
        waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve(value);
      }
    }
  };
  for (const event of events) {
    socket.on(event, (...args) => {
      log.push({ event, args });
      check();
    });
  }
  return {
    log,
    /** Waits until pred(log) returns something truthy; resolves with it. */
    until(pred, what, ms = STEP_TIMEOUT_MS) {
      return new Promise((resolve, reject) => {
        const w = { pred, resolve, reject, timer: null };
        w.timer = setTimeout(() => {
          waiters.delete(w);
          reject(
            new Error(
              `timed out after ${ms} ms waiting for ${what}; events so far: ` +
                JSON.stringify(log.map((e) => [e.event, ...e.args])),
            ),
          );
        }, ms);
        waiters.add(w);
        check();
      });
    },
    /** Waits for the first occurrence of `event` (matching `match`), resolves with its first arg. */
    next(event, match = () => true, ms = STEP_TIMEOUT_MS) {
      return this.until(
        (l) => l.find((e) => e.event === event && match(e.args[0]))?.args ?? null,
        `event ${JSON.stringify(event)}`,
        ms,
      ).then((args) => args[0]);
    },
  };
}

/**
 * Connects a subscriber with a token and cursor; resolves once `connect` and `synced`
 * have arrived. Listeners are registered before connecting.
 */
async function connectSubscriber(token, cursor, opts = {}) {
  const socket = makeSocket('/', { auth: { token, cursor }, ...opts });
  const rec = record(socket, ['connect', 'connect_error', 'disconnect', 'sync', 'synced', 'notification']);
  socket.connect();
  const first = await rec.until(
    (l) => l.find((e) => e.event === 'connect' || e.event === 'connect_error'),
    'connect or connect_error',
  );
  if (first.event === 'connect_error') {
    socket.close();
    throw new Error(`subscriber refused: ${first.args[0]?.message}`);
  }
  await rec.next('synced');
  return { socket, rec };
}

/** Connects expecting a refusal; resolves with the connect_error's Error. */
async function expectConnectError(nsp, opts) {
  const socket = makeSocket(nsp, opts);
  try {
    const rec = record(socket, ['connect', 'connect_error']);
    socket.connect();
    const first = await rec.until(
      (l) => l.find((e) => e.event === 'connect' || e.event === 'connect_error'),
      'connect or connect_error',
    );
    assert.equal(first.event, 'connect_error', `expected connect_error on ${nsp}, but the hub accepted the connection`);
    return first.args[0];
  } finally {
    socket.close();
  }
}

/** Runs a test body; on failure, appends the hub's log tail to the error. */
function withHubLog(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (err) {
      if (err && typeof err === 'object' && typeof err.message === 'string') {
        err.message += `\n${hubLogTail()}`;
      }
      throw err;
    }
  };
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

before(startHub, { timeout: STARTUP_TIMEOUT_MS + 5_000 });
after(stopHub, { timeout: 10_000 });

test(
  'websocket transport: connect with token and cursor null, live notification, ack',
  { timeout: TEST_TIMEOUT_MS },
  withHubLog(async () => {
    const token = await mintToken('alice');
    const { socket, rec } = await connectSubscriber(token, null, { transports: ['websocket'] });
    try {
      assert.equal(socket.io.engine.transport.name, 'websocket');
      const synced = rec.log.find((e) => e.event === 'synced').args[0];
      assert.equal(typeof synced.head, 'number', `synced payload: ${JSON.stringify(synced)}`);
      // A first connection (cursor null) gets one batch of unread notifications: none yet.
      const batches = rec.log.filter((e) => e.event === 'sync').map((e) => e.args[0]);
      for (const b of batches) {
        assert.ok(Array.isArray(b.notifications), `sync batch: ${JSON.stringify(b)}`);
        assert.equal(typeof b.more, 'boolean', `sync batch: ${JSON.stringify(b)}`);
      }
      assert.deepEqual(batches.flatMap((b) => b.notifications), []);

      const title = `hello alice ${Date.now()}`;
      const published = await publishHttp({ to: ['user:alice'], title });
      const n = await rec.next('notification', (x) => x?.id === published.id);
      assert.equal(n.id, published.id);
      assert.equal(n.title, title);

      // `ack` with a Socket.IO ack callback.
      const reply = await new Promise((resolve, reject) => {
        socket.timeout(STEP_TIMEOUT_MS).emit('ack', { up_to: published.id }, (err, res) => {
          if (err) reject(new Error(`no ack reply to 'ack' within ${STEP_TIMEOUT_MS} ms: ${err.message}`));
          else resolve(res);
        });
      });
      assert.deepEqual(reply, { ok: true });
    } finally {
      socket.close();
    }
  }),
);

test(
  'default transport (polling, then upgrade): catch-up of notifications published while offline',
  { timeout: TEST_TIMEOUT_MS },
  withHubLog(async () => {
    const token = await mintToken('bob');
    // One notification bob already holds, then three he misses while offline.
    const held = await publishHttp({ to: ['user:bob'], title: 'bob already has this' });
    const missed = [];
    for (let i = 1; i <= 3; i++) {
      missed.push(await publishHttp({ to: ['user:bob'], title: `missed ${i}` }));
    }
    const ids = missed.map((m) => m.id);
    assert.ok(held.id < ids[0], `ids not increasing: held ${held.id}, then ${ids}`);

    const socket = makeSocket('/', { auth: { token, cursor: held.id } });
    const rec = record(socket, ['connect', 'connect_error', 'disconnect', 'sync', 'synced', 'notification']);
    // The transport the Engine.IO session opened on, and the one it upgrades to. (On
    // loopback the upgrade may complete before the Socket.IO `connect` event, so both are
    // read from the engine itself.)
    let firstTransport = null;
    const upgraded = new Promise((resolve) => {
      socket.io.on('open', () => {
        firstTransport = socket.io.engine.transport.name;
        socket.io.engine.once('upgrade', (t) => resolve(t.name));
      });
    });
    try {
      socket.connect();
      const first = await rec.until(
        (l) => l.find((e) => e.event === 'connect' || e.event === 'connect_error'),
        'connect or connect_error',
      );
      assert.equal(first.event, 'connect', `refused: ${first.args[0]?.message}`);
      assert.equal(firstTransport, 'polling', 'the default client should start on HTTP long-polling');

      const synced = await rec.next('synced');
      const syncedAt = rec.log.findIndex((e) => e.event === 'synced');
      const batches = rec.log
        .slice(0, syncedAt)
        .filter((e) => e.event === 'sync')
        .map((e) => e.args[0]);
      assert.ok(batches.length >= 1, `no sync batch before synced; events: ${JSON.stringify(rec.log)}`);
      assert.equal(batches.at(-1).more, false, 'the last batch before synced must say more: false');
      const got = batches.flatMap((b) => b.notifications);
      assert.deepEqual(
        got.map((n) => n.id),
        ids,
        `expected exactly the 3 missed ids ascending; got ${JSON.stringify(got)}`,
      );
      assert.deepEqual(
        got.map((n) => n.title),
        ['missed 1', 'missed 2', 'missed 3'],
      );
      assert.ok(synced.head >= ids[2], `synced.head ${synced.head} < last id ${ids[2]}`);
      // Nothing was delivered twice as a live notification.
      assert.deepEqual(rec.log.filter((e) => e.event === 'notification'), []);

      const upgradedTo = await Promise.race([
        upgraded,
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error('transport did not upgrade to websocket in time')), STEP_TIMEOUT_MS),
        ),
      ]);
      assert.equal(upgradedTo, 'websocket');
      assert.equal(socket.connected, true);
    } finally {
      socket.close();
    }
  }),
);

test('refused handshakes', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await t.test(
    'a forged token (signed with another secret) gets token_bad_signature',
    { timeout: TEST_TIMEOUT_MS },
    withHubLog(async () => {
      const forged = await mintToken('mallory', OTHER_JWT_SECRET);
      const e = await expectConnectError('/', { auth: { token: forged, cursor: null } });
      assert.ok(
        e.message.startsWith('token_bad_signature'),
        `forged token: connect_error message ${JSON.stringify(e.message)}`,
      );
    }),
  );
  await t.test(
    'a missing token gets unauthorized',
    { timeout: TEST_TIMEOUT_MS },
    withHubLog(async () => {
      const e = await expectConnectError('/', {});
      assert.ok(
        e.message.startsWith('unauthorized'),
        `missing token: connect_error message ${JSON.stringify(e.message)}`,
      );
    }),
  );
  await t.test(
    'a malformed token gets token_malformed',
    { timeout: TEST_TIMEOUT_MS },
    withHubLog(async () => {
      const e = await expectConnectError('/', { auth: { token: 'not-a-jwt', cursor: null } });
      assert.ok(
        e.message.startsWith('token_malformed'),
        `malformed token: connect_error message ${JSON.stringify(e.message)}`,
      );
    }),
  );
});

test('publisher namespace /publisher', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await t.test(
    'notify over Socket.IO is acked with an id and reaches a live subscriber',
    { timeout: TEST_TIMEOUT_MS },
    withHubLog(async () => {
      const token = await mintToken('carol');
      const { socket: carol, rec } = await connectSubscriber(token, null);
      const publisher = makeSocket('/publisher', { auth: { key: PUBLISH_KEY } });
      try {
        const prec = record(publisher, ['connect', 'connect_error']);
        publisher.connect();
        const first = await prec.until(
          (l) => l.find((e) => e.event === 'connect' || e.event === 'connect_error'),
          'publisher connect or connect_error',
        );
        assert.equal(first.event, 'connect', `publisher refused: ${first.args[0]?.message}`);

        const reply = await publisher
          .timeout(STEP_TIMEOUT_MS)
          .emitWithAck('notify', { to: ['user:carol'], title: 'via socket' });
        assert.equal(typeof reply?.id, 'number', `notify reply: ${JSON.stringify(reply)}`);
        assert.equal(typeof reply.created_at, 'string', `notify reply: ${JSON.stringify(reply)}`);

        const n = await rec.next('notification', (x) => x?.id === reply.id);
        assert.equal(n.title, 'via socket');
      } finally {
        publisher.close();
        carol.close();
      }
    }),
  );
  await t.test(
    'a wrong publish key gets invalid_publish_key',
    { timeout: TEST_TIMEOUT_MS },
    withHubLog(async () => {
      const e = await expectConnectError('/publisher', { auth: { key: 'wrong-publish-key-0123456789' } });
      assert.ok(
        e.message.startsWith('invalid_publish_key'),
        `wrong key: connect_error message ${JSON.stringify(e.message)}`,
      );
    }),
  );
});

test(
  'subscribe to a topic over the socket, then a topic publish arrives live',
  { timeout: TEST_TIMEOUT_MS },
  withHubLog(async () => {
    const token = await mintToken('dave');
    const { socket, rec } = await connectSubscriber(token, null, { transports: ['websocket'] });
    try {
      const reply = await socket.timeout(STEP_TIMEOUT_MS).emitWithAck('subscribe', { topic: 'deploys' });
      assert.deepEqual(reply, { ok: true });

      const title = `deploy ${Date.now()}`;
      const published = await publishHttp({ to: ['topic:deploys'], title });
      const n = await rec.next('notification', (x) => x?.id === published.id);
      assert.equal(n.title, title);
    } finally {
      socket.close();
    }
  }),
);
