// Smoke test of the peer's contract: starts server.js on a free port (PORT=0, the
// port is read from its `listening on <port>` line) and speaks to it with
// socket.io-client and fetch.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { createInterface } from "node:readline";
import jwt from "jsonwebtoken";
import { io as ioClient } from "socket.io-client";

const DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const SECRET = "belfry-test-secret-0123456789abcdef";
const KEY = "bfk_belfry_test_key";
const WAIT_MS = 3000;

let child;
let base;
const sockets = [];

function killChild() {
  if (child && child.exitCode === null && child.signalCode === null) {
    child.kill("SIGKILL");
  }
}
// Whatever happens to this process, do not leave the server behind.
process.on("exit", killChild);

function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

before(async () => {
  const env = { ...process.env, PORT: "0", HOST: "127.0.0.1" };
  delete env.SECRET;
  delete env.PUBLISH_KEY;
  child = spawn(process.execPath, ["server.js"], {
    cwd: DIR,
    env,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      lines.on("line", (line) => {
        const m = /^listening on (\d+)$/.exec(line);
        if (m) resolve(Number(m[1]));
      });
      child.once("exit", (code, signal) => reject(new Error(`server exited early (${code ?? signal})`)));
      child.once("error", reject);
    }),
    "`listening on <port>`",
    10000,
  );
  assert.ok(port > 0);
  base = `http://127.0.0.1:${port}`;
});

after(async () => {
  for (const s of sockets) s.disconnect();
  if (child && child.exitCode === null && child.signalCode === null) {
    const exited = once(child, "exit");
    child.kill("SIGTERM");
    const timer = setTimeout(killChild, 2000);
    await exited;
    clearTimeout(timer);
  }
});

function token(sub) {
  return jwt.sign({ sub }, SECRET, { algorithm: "HS256", expiresIn: "1h" });
}

// Connects as `user`; resolves once `synced` arrives, with what `sync` and `synced`
// carried and every `notification` received (live, accumulated in `live`).
async function connect(user, tok = token(user)) {
  const socket = ioClient(base, {
    transports: ["websocket"],
    auth: { token: tok, cursor: null },
    reconnection: false,
    autoConnect: false,
  });
  sockets.push(socket);
  const conn = { socket, sync: null, synced: null, live: [], order: [] };
  socket.on("notification", (n) => conn.live.push(n));
  const done = new Promise((resolve, reject) => {
    socket.on("sync", (data) => {
      conn.order.push("sync");
      conn.sync = data;
    });
    socket.on("synced", (data) => {
      conn.order.push("synced");
      conn.synced = data;
      resolve(conn);
    });
    socket.on("connect_error", reject);
  });
  socket.connect();
  return withTimeout(done, `${user}'s sync/synced`);
}

async function nextNotification(conn, what) {
  if (conn.live.length) return conn.live.shift();
  await withTimeout(once(conn.socket, "notification"), what);
  return conn.live.shift();
}

async function publish(payload, key = KEY) {
  const res = await fetch(`${base}/api/v1/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: typeof payload === "string" ? payload : JSON.stringify(payload),
  });
  return { status: res.status, json: await res.json() };
}

test("a fresh connection gets an empty sync, then synced with head 0", async () => {
  const c = await connect("alice");
  assert.deepEqual(c.order, ["sync", "synced"]);
  assert.deepEqual(c.sync, { notifications: [], more: false });
  assert.deepEqual(c.synced, { head: 0 });
  c.socket.disconnect();
});

test("health", async () => {
  const res = await fetch(`${base}/health`);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { ok: true });
});

test("a publish to a connected user arrives live", async () => {
  const alice = await connect("alice");
  const { status, json } = await publish({ to: ["user:alice"], title: "hello alice", body: "b" });
  assert.equal(status, 201);
  assert.equal(typeof json.id, "number");
  const n = await nextNotification(alice, "alice's notification");
  assert.equal(n.id, json.id);
  assert.equal(n.title, "hello alice");
  assert.equal(n.body, "b");
  assert.equal(n.event, "notification");
  assert.ok(!Number.isNaN(Date.parse(n.created_at)));

  // An ack is accepted and ignored; the connection keeps working.
  alice.socket.emit("ack", { up_to: json.id });
  const second = await publish({ to: ["user:alice"], title: "again" });
  assert.equal(second.status, 201);
  assert.equal(second.json.id, json.id + 1);
  const n2 = await nextNotification(alice, "alice's second notification");
  assert.equal(n2.id, second.json.id);
  assert.equal(n2.body, "");
  assert.ok(alice.socket.connected);
  alice.socket.disconnect();
});

test("a publish to an offline user is queued and delivered once in sync", async () => {
  const first = await publish({ to: ["user:bob"], title: "bob 1" });
  const second = await publish({ to: ["user:bob"], title: "bob 2", body: "x" });
  assert.equal(first.status, 201);
  assert.equal(second.status, 201);

  const bob = await connect("bob");
  assert.deepEqual(bob.order, ["sync", "synced"]);
  assert.equal(bob.sync.more, false);
  assert.deepEqual(
    bob.sync.notifications.map((n) => [n.id, n.title, n.body]),
    [
      [first.json.id, "bob 1", ""],
      [second.json.id, "bob 2", "x"],
    ],
  );
  assert.equal(bob.synced.head, second.json.id);
  assert.equal(bob.live.length, 0);
  bob.socket.disconnect();

  const again = await connect("bob");
  assert.deepEqual(again.sync, { notifications: [], more: false });
  assert.equal(again.synced.head, second.json.id);
  again.socket.disconnect();
});

test("a publish to all reaches a connected client", async () => {
  const carol = await connect("carol");
  const { status, json } = await publish({ to: ["all"], title: "broadcast" });
  assert.equal(status, 201);
  const n = await nextNotification(carol, "carol's broadcast");
  assert.equal(n.id, json.id);
  assert.equal(n.title, "broadcast");
  carol.socket.disconnect();
});

test("bad token, bad key and bad bodies are refused", async () => {
  await assert.rejects(connect("mallory", "not-a-token"), (err) => {
    assert.equal(err.message, "unauthorized");
    return true;
  });
  const forged = jwt.sign({ sub: "alice" }, "some-other-secret", { algorithm: "HS256", expiresIn: "1h" });
  await assert.rejects(connect("alice", forged), /unauthorized/);

  assert.deepEqual(await publish({ to: ["all"], title: "t" }, "wrong-key"), {
    status: 401,
    json: { error: "unauthorized" },
  });
  const noKey = await fetch(`${base}/api/v1/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ to: ["all"], title: "t" }),
  });
  assert.equal(noKey.status, 401);

  const noTo = await publish({ title: "t" });
  assert.equal(noTo.status, 400);
  assert.equal(typeof noTo.json.error, "string");
  assert.equal((await publish({ to: [], title: "t" })).status, 400);
  assert.equal((await publish({ to: ["all"] })).status, 400);
  assert.equal((await publish("{not json")).status, 400);
});
