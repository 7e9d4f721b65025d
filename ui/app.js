// The Belfry window. It talks to the app only through Tauri commands and events
// (window.__TAURI__, enabled by app.withGlobalTauri). Notification text is always put in
// the page as text, never as HTML.

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;

const $ = (id) => document.getElementById(id);
const PRIORITIES = ["min", "low", "default", "high", "urgent"];

const state = {
  tab: "notifications",
  query: { topic: null, min_priority: null, unread_only: false, search: null, limit: 300 },
};

// ---- helpers ---------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today);
  yesterday.setDate(today.getDate() - 1);
  const same = (a, b) => a.toDateString() === b.toDateString();
  if (same(date, today)) return "Today";
  if (same(date, yesterday)) return "Yesterday";
  return date.toLocaleDateString(undefined, { weekday: "long", day: "numeric", month: "long", year: "numeric" });
}

function showError(target, error) {
  target.textContent = String(error);
  target.classList.add("error");
}

function showMessage(target, text) {
  target.textContent = text;
  target.classList.remove("error");
}

// ---- connection ------------------------------------------------------------------------

function renderStatus(status) {
  $("connection").dataset.state = status.state;
  $("status-text").textContent = status.detail;
}

async function refreshStatus() {
  renderStatus(await invoke("status"));
  const problem = await invoke("notifier_problem");
  $("notifier-warning").hidden = !problem;
  if (problem) $("notifier-warning").textContent = problem;
}

// ---- notifications ---------------------------------------------------------------------

function renderNotification(n) {
  const item = el("article", {
    class: `notification${n.read ? "" : " unread"}`,
    dataset: { id: String(n.id) },
  });
  const created = new Date(n.created_at);
  item.append(
    el("div", { class: "head" },
      n.priority !== "default" ? el("span", { class: `prio ${n.priority}` }, n.priority) : null,
      el("span", { class: "title" }, n.title),
      el("time", { class: "time", datetime: n.created_at }, created.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })),
    ),
  );
  if (n.body) item.append(el("p", { class: "body" }, n.body));
  const meta = el("div", { class: "meta" });
  if (n.topic) meta.append(el("span", { class: "tag topic" }, `#${n.topic}`));
  for (const tag of n.tags) meta.append(el("span", { class: "tag" }, tag));
  const actions = el("div", { class: "actions" });
  if (n.url) {
    actions.append(el("button", { type: "button", class: "open", onclick: () => openUrl(n.url, n) }, "Open"));
  }
  for (const action of n.actions) {
    actions.append(el("button", { type: "button", class: "action", onclick: () => openUrl(action.url, n) }, action.label));
  }
  if (!n.read) {
    actions.append(el("button", { type: "button", class: "mark-read", onclick: () => markRead([n.id]) }, "Mark read"));
  }
  meta.append(actions);
  item.append(meta);
  return item;
}

async function refreshList() {
  const list = $("list");
  let notifications;
  try {
    notifications = await invoke("history", { query: state.query });
  } catch (e) {
    list.replaceChildren(el("p", { class: "message error" }, String(e)));
    return;
  }
  const nodes = [];
  let day = null;
  for (const n of notifications) {
    const label = dayLabel(new Date(n.created_at));
    if (label !== day) {
      day = label;
      nodes.push(el("h2", { class: "day" }, label));
    }
    nodes.push(renderNotification(n));
  }
  list.replaceChildren(...nodes);
  $("empty").hidden = notifications.length > 0;
}

async function refreshCount() {
  const count = await invoke("unread_count");
  const badge = $("unread-count");
  badge.textContent = String(count);
  badge.dataset.zero = String(count === 0);
  $("mark-all-read").disabled = count === 0;
  document.title = count > 0 ? `Belfry (${count})` : "Belfry";
}

async function refreshTopicFilter() {
  const select = $("filter-topic");
  const chosen = select.value;
  const topics = await invoke("history_topics");
  select.replaceChildren(
    el("option", { value: "" }, "All topics"),
    el("option", { value: "-" }, "No topic"),
    ...topics.map((t) => el("option", { value: t }, `#${t}`)),
  );
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

async function refreshAll() {
  await Promise.all([refreshList(), refreshCount(), refreshTopicFilter()]);
}

async function markRead(ids) {
  await invoke("mark_read", { ids });
  await Promise.all([refreshList(), refreshCount()]);
}

async function openUrl(url, n) {
  try {
    await invoke("open_url", { url });
    if (!n.read) await markRead([n.id]);
  } catch (e) {
    alert(e);
  }
}

// ---- topics ----------------------------------------------------------------------------

async function refreshTopics() {
  const message = $("topics-message");
  try {
    const topics = await invoke("subscriptions");
    $("topics").replaceChildren(
      ...topics.map((t) =>
        el("li", { dataset: { topic: t } },
          el("span", {}, `#${t}`),
          el("button", { type: "button", onclick: () => changeTopic("unsubscribe", t) }, "Unsubscribe"),
        ),
      ),
    );
    showMessage(message, topics.length ? "" : "No topics yet.");
  } catch (e) {
    showError(message, e);
  }
}

async function changeTopic(command, topic) {
  try {
    await invoke(command, { topic });
    await refreshTopics();
  } catch (e) {
    showError($("topics-message"), e);
  }
}

// ---- settings --------------------------------------------------------------------------

const toMinutes = (hhmm) => {
  const [h, m] = hhmm.split(":").map(Number);
  return h * 60 + m;
};
const toHHMM = (minutes) =>
  `${String(Math.floor(minutes / 60)).padStart(2, "0")}:${String(minutes % 60).padStart(2, "0")}`;

let loadedSettings = null;

function dndChoice(dnd) {
  if (dnd.mode === "always") return "always";
  if (dnd.mode === "until" && new Date(dnd.until) > new Date()) {
    return new Date(dnd.until) - new Date() <= 3600 * 1000 ? "hour" : "tomorrow";
  }
  return "off";
}

async function loadSettings() {
  const s = await invoke("get_settings");
  loadedSettings = s;
  $("set-server").value = s.server_url;
  $("set-token").value = s.token;
  $("set-threshold").value = s.popup_min_priority;
  $("set-digest").value = s.digest_threshold;
  $("set-dnd").value = dndChoice(s.dnd);
  $("dnd-until").textContent =
    s.dnd.mode === "until" && new Date(s.dnd.until) > new Date()
      ? `Quiet until ${new Date(s.dnd.until).toLocaleString()}`
      : "";
  $("set-urgent").checked = s.urgent_breaks_through;
  $("set-quiet").checked = s.quiet_hours !== null;
  if (s.quiet_hours) {
    $("set-quiet-start").value = toHHMM(s.quiet_hours.start_minute);
    $("set-quiet-end").value = toHHMM(s.quiet_hours.end_minute);
  }
  try {
    $("set-autostart").checked = await invoke("start_at_login");
  } catch {
    $("set-autostart").checked = s.start_at_login;
  }
}

async function saveSettings(event) {
  event.preventDefault();
  const message = $("settings-message");
  const settings = {
    ...loadedSettings,
    server_url: $("set-server").value.trim(),
    token: $("set-token").value.trim(),
    popup_min_priority: $("set-threshold").value,
    digest_threshold: Number($("set-digest").value),
    urgent_breaks_through: $("set-urgent").checked,
    quiet_hours: $("set-quiet").checked
      ? { start_minute: toMinutes($("set-quiet-start").value), end_minute: toMinutes($("set-quiet-end").value) }
      : null,
    start_at_login: $("set-autostart").checked,
  };
  try {
    await invoke("save_settings", { settings });
    const dnd = $("set-dnd").value;
    if (dnd !== dndChoice(loadedSettings.dnd)) await invoke("set_dnd", { mode: dnd });
    await loadSettings();
    showMessage(message, "Saved.");
  } catch (e) {
    showError(message, e);
  }
}

// ---- wiring ----------------------------------------------------------------------------

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const section of document.querySelectorAll(".tab")) {
    section.hidden = section.id !== `tab-${tab}`;
  }
  if (tab === "topics") refreshTopics();
  if (tab === "settings") loadSettings();
}

let searchTimer = null;

function wire() {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  $("reconnect").addEventListener("click", () => invoke("reconnect_now"));
  $("mark-all-read").addEventListener("click", async () => {
    await invoke("mark_all_read");
    await Promise.all([refreshList(), refreshCount()]);
  });
  const searchChanged = () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.query.search = $("search").value.trim() || null;
      refreshList();
    }, 150);
  };
  $("search").addEventListener("input", searchChanged);
  $("search").addEventListener("change", searchChanged);
  $("filter-topic").addEventListener("change", () => {
    const v = $("filter-topic").value;
    state.query.topic = v === "" ? null : v === "-" ? "" : v;
    refreshList();
  });
  $("filter-priority").addEventListener("change", () => {
    const v = $("filter-priority").value;
    state.query.min_priority = PRIORITIES.includes(v) ? v : null;
    refreshList();
  });
  $("filter-unread").addEventListener("change", () => {
    state.query.unread_only = $("filter-unread").checked;
    refreshList();
  });
  $("subscribe-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const topic = $("topic-name").value.trim();
    if (!topic) return;
    await changeTopic("subscribe", topic);
    $("topic-name").value = "";
  });
  $("settings-form").addEventListener("submit", saveSettings);
}

async function main() {
  wire();
  await listen("belfry://status", (event) => renderStatus(event.payload));
  await listen("belfry://changed", () => refreshAll());
  await listen("belfry://topics", () => state.tab === "topics" && refreshTopics());
  await listen("belfry://notifier", (event) => {
    $("notifier-warning").hidden = false;
    $("notifier-warning").textContent = event.payload;
  });
  await refreshStatus();
  await refreshAll();
  document.body.dataset.ready = "true";
}

main().catch((e) => {
  document.body.append(el("p", { class: "message error" }, `Belfry could not start its window: ${e}`));
});
