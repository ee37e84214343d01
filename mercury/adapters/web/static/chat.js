// Mercury web chat: login, a message list fed by server-sent events (polling as a
// fallback), and a compose box with file upload. No build step, no dependencies.
// Served at /chat (with its own login form) and mounted by the dashboard's Chat page
// (/dashboard/chat): there the page has no login form or logout button (the dashboard
// has its own), and #chat carries data-login-url, where a lost session sends the browser.
"use strict";

const $ = (id) => document.getElementById(id);
const LOGIN_URL = ($("chat") && $("chat").dataset.loginUrl) || null;
const state = { space: "main", cursor: null, source: null, pollTimer: null, byId: new Map() };
let typingTimer = null;

// Writes made with the session cookie must look like our own page's: JSON bodies say
// so in Content-Type, and uploads (multipart) carry X-Mercury-Request. Another site's
// form can do neither without a CORS preflight, which the server never grants.
const JSON_HEADERS = { "Content-Type": "application/json" };

async function api(path, options = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const err = new Error((body && body.error) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function setHidden(id, hidden) {
  const el = $(id);
  if (el) el.hidden = hidden;
}

function show(loggedIn, message) {
  if (!loggedIn && LOGIN_URL) { location.assign(LOGIN_URL); return; }
  setHidden("login", loggedIn);
  setHidden("chat", !loggedIn);
  setHidden("logout", !loggedIn);
  const error = $("login-error");
  if (error) error.textContent = message || "";
}

// A new entry, or an edit of one shown: a status or a reply growing while the model writes
// (the server sends the whole entry again, same id and role), redrawn where it stands.
function render(entry) {
  if (entry.deleted) { remove(entry.id); return; }
  const box = $("messages");
  // An edit follows the text down only for a reader already at the bottom: one who
  // scrolled up to read is not pulled away about once a second.
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  let el = state.byId.get(entry.id);
  const added = !el;
  if (!el) {
    el = document.createElement("div");
    state.byId.set(entry.id, el);
    box.appendChild(el);
  }
  // A preview is the answer while it is written: the reply replaces it (delete event).
  el.className = `msg ${entry.role}${entry.preview ? " preview" : ""}`;
  el.replaceChildren();
  const meta = document.createElement("div");
  meta.className = "meta";
  const when = entry.ts ? new Date(entry.ts).toLocaleTimeString() : "";
  meta.textContent = `${entry.author || entry.role} · ${when}`;
  const text = document.createElement("div");
  text.textContent = entry.text || "";  // textContent: never interpret message text as HTML
  el.append(meta, text);
  if (entry.files && entry.files.length) {
    const files = document.createElement("div");
    files.className = "files";
    for (const f of entry.files) {
      const a = document.createElement("a");
      a.href = f.url;
      a.textContent = `📎 ${f.name}`;
      a.target = "_blank";
      a.rel = "noopener";
      files.appendChild(a);
    }
    el.appendChild(files);
  }
  if (entry.role === "assistant" && !entry.preview) $("typing").textContent = "";  // answered
  if (typeof entry.cursor === "number" && (state.cursor === null || entry.cursor > state.cursor)) {
    state.cursor = entry.cursor;
  }
  if (added || atBottom) box.scrollTop = box.scrollHeight;
}

function remove(id) {
  const el = state.byId.get(id);
  if (el) { el.remove(); state.byId.delete(id); }
}

function typing() {
  $("typing").textContent = "Mercury is working…";
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => { $("typing").textContent = ""; }, 8000);
}

function stopFeeds() {
  if (state.source) { state.source.close(); state.source = null; }
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

async function openSpace() {
  stopFeeds();
  state.space = $("space").value.trim() || "main";
  state.cursor = null;
  state.byId.clear();
  $("messages").replaceChildren();
  const q = encodeURIComponent(state.space);
  try {
    const data = await api(`/api/chat/messages?space=${q}`);
    data.messages.forEach(render);
    state.cursor = data.cursor;
  } catch (err) {
    if (err.status === 401) { show(false); return; }
    $("send-error").textContent = err.message;
    return;
  }
  stream();
}

function stream() {
  if (!window.EventSource) { poll(); return; }
  const q = encodeURIComponent(state.space);
  const after = state.cursor === null ? "" : `&after=${state.cursor}`;
  const src = new EventSource(`/api/chat/stream?space=${q}${after}`);
  state.source = src;
  let opened = false;
  src.onopen = () => { opened = true; $("conn").textContent = "live"; };
  src.addEventListener("message", (e) => render(JSON.parse(e.data)));
  src.addEventListener("edit", (e) => render(JSON.parse(e.data)));  // in place, by id
  src.addEventListener("delete", (e) => remove(JSON.parse(e.data).id));  // a withdrawn preview
  src.addEventListener("typing", typing);
  src.onerror = () => {
    // The browser retries on its own; if the stream never worked, poll instead.
    if (!opened || src.readyState === EventSource.CLOSED) {
      src.close();
      state.source = null;
      poll();
    }
  };
}

async function poll() {
  $("conn").textContent = "polling";
  const q = encodeURIComponent(state.space);
  try {
    const after = state.cursor === null ? "" : `&after=${state.cursor}`;
    const data = await api(`/api/chat/messages?space=${q}${after}`);
    data.messages.forEach(render);
    if (data.cursor !== null) state.cursor = data.cursor;
  } catch (err) {
    if (err.status === 401) { show(false); return; }
  }
  state.pollTimer = setTimeout(poll, 2000);
}

async function send(event) {
  event.preventDefault();
  const text = $("text").value;
  const files = $("file").files;
  if (!text.trim() && !files.length) return;
  $("send").disabled = true;
  $("send-error").textContent = "";
  const clientId = (crypto.randomUUID && crypto.randomUUID()) || String(Date.now() + Math.random());
  try {
    if (files.length) {
      const form = new FormData();
      form.append("space", state.space);
      form.append("text", text);
      form.append("client_id", clientId);
      for (const f of files) form.append("file", f, f.name);
      await api("/api/chat/files", {
        method: "POST",
        headers: { "X-Mercury-Request": "1" },  // the browser sets the multipart type
        body: form,
      });
    } else {
      await api("/api/chat/messages", {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({ space: state.space, text, client_id: clientId }),
      });
    }
    $("text").value = "";
    $("file").value = "";
    if (!state.source && !state.pollTimer) poll();
  } catch (err) {
    if (err.status === 401) show(false);
    $("send-error").textContent = err.message;
  } finally {
    $("send").disabled = false;
  }
}

async function login(event) {
  event.preventDefault();
  try {
    await api("/api/login", {
      method: "POST",
      headers: JSON_HEADERS,
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    $("password").value = "";
    show(true);
    openSpace();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
}

async function init() {
  const fromUrl = new URLSearchParams(location.search).get("space");
  if (fromUrl) $("space").value = fromUrl;
  if ($("login")) $("login").addEventListener("submit", login);
  $("compose").addEventListener("submit", send);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("compose").requestSubmit(); }
  });
  $("space").addEventListener("change", openSpace);
  if ($("logout")) $("logout").addEventListener("click", async () => {
    stopFeeds();
    await api("/api/logout", { method: "POST", headers: JSON_HEADERS, body: "{}" }).catch(() => {});
    show(false);
  });
  try {
    await api("/api/chat/session");
    show(true);
    openSpace();
  } catch (err) {
    show(false, err.status === 401 ? "" : err.message);
  }
}

init();
