"use strict";

// Belfry's comparison peer: a Socket.IO 4 notification hub written the way the
// popular tutorials write one (express + socket.io + jsonwebtoken, one room per
// user, an in-memory queue for users who are offline), tuned as
// https://socket.io/docs/v4/performance-tuning/ advises. See README.md.

const http = require("node:http");
const express = require("express");
const jwt = require("jsonwebtoken");
const { Server } = require("socket.io");

const PORT = process.env.PORT === undefined || process.env.PORT === "" ? 3000 : Number(process.env.PORT);
const HOST = process.env.HOST || "127.0.0.1";
const SECRET = process.env.SECRET || "belfry-test-secret-0123456789abcdef";
const PUBLISH_KEY = process.env.PUBLISH_KEY || "bfk_belfry_test_key";

if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error(`invalid PORT: ${process.env.PORT}`);
  process.exit(2);
}

// Global notification id counter: the first id assigned is 1; 0 means "none yet".
let counter = 0;
// Offline queue: user name -> notifications published while they had no socket.
// Memory only: lost on restart.
const offline = new Map();

const app = express();
app.disable("x-powered-by");
const server = http.createServer(app);

const io = new Server(server, {
  serveClient: false,
  transports: ["websocket"],
  perMessageDeflate: false, // the default in socket.io 4, kept off explicitly
  // pingInterval / pingTimeout: Engine.IO defaults (25000 / 20000).
});

// Performance tuning: drop the reference to the upgrade request each Engine.IO
// connection holds (only the handshake auth object is used below).
io.engine.on("connection", (rawSocket) => {
  rawSocket.request = null;
});

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (typeof token !== "string" || token === "") {
    return next(new Error("unauthorized"));
  }
  try {
    const claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
    if (!claims || typeof claims.sub !== "string" || claims.sub === "") {
      return next(new Error("unauthorized"));
    }
    socket.data.user = claims.sub;
    next();
  } catch (err) {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  socket.join("user:" + user);

  // Catch-up: whatever was queued while the user was offline (in id order, as it
  // was pushed), then the head, so the client knows its catch-up is complete.
  // The handshake `cursor` is ignored: the tutorials have no read state.
  const queued = offline.get(user) || [];
  offline.delete(user);
  socket.emit("sync", { notifications: queued, more: false });
  socket.emit("synced", { head: counter });

  socket.on("ack", () => {
    // Accepted and ignored: no read state.
  });
});

app.get("/health", (req, res) => {
  res.json({ ok: true });
});

function requirePublishKey(req, res, next) {
  if (req.get("authorization") !== "Bearer " + PUBLISH_KEY) {
    return res.status(401).json({ error: "unauthorized" });
  }
  next();
}

app.post(
  "/api/v1/notifications",
  requirePublishKey,
  express.json({ limit: "64kb" }),
  (req, res) => {
    const { to, title, body } = req.body || {};

    if (!Array.isArray(to) || to.length === 0) {
      return res.status(400).json({ error: "`to` must be a non-empty array" });
    }
    for (const target of to) {
      if (target !== "all" && !(typeof target === "string" && target.startsWith("user:") && target.length > 5)) {
        return res.status(400).json({ error: "each `to` entry must be \"all\" or \"user:<name>\"" });
      }
    }
    if (typeof title !== "string") {
      return res.status(400).json({ error: "`title` is required" });
    }
    if (body !== undefined && body !== null && typeof body !== "string") {
      return res.status(400).json({ error: "`body` must be a string" });
    }

    const id = ++counter;
    const n = {
      id,
      event: "notification",
      title,
      body: body ?? "",
      created_at: new Date().toISOString(),
    };

    for (const room of new Set(to)) {
      if (room === "all") {
        io.emit("notification", n);
        continue;
      }
      if (io.sockets.adapter.rooms.get(room)?.size) {
        io.to(room).emit("notification", n);
      } else {
        const user = room.slice("user:".length);
        let queue = offline.get(user);
        if (!queue) {
          queue = [];
          offline.set(user, queue);
        }
        queue.push(n);
      }
    }

    res.status(201).json({ id });
  },
);

app.use((req, res) => {
  res.status(404).json({ error: "not found" });
});

// Body parser errors (malformed JSON, too large) as JSON.
// eslint-disable-next-line no-unused-vars
app.use((err, req, res, next) => {
  const status = err.status || err.statusCode || 500;
  let error = "internal error";
  if (err.type === "entity.parse.failed") error = "invalid JSON body";
  else if (err.type === "entity.too.large") error = "body too large";
  else if (status < 500) error = err.message || "bad request";
  res.status(status).json({ error });
});

server.on("error", (err) => {
  console.error(`server error: ${err.message}`);
  process.exit(1);
});

server.listen(PORT, HOST, () => {
  process.stdout.write(`listening on ${server.address().port}\n`);
});

function shutdown() {
  // io.close() disconnects every socket and closes the HTTP server too.
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
