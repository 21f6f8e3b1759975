// The playground: a chat page over this server's own OpenAI API (/v1/models, /v1/responses,
// /v1/conversations). No build step; two vendored libraries (see vendor/README.md).
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

const KEY = "chatbot-api.key"; // sessionStorage: this tab only
const MODEL = "chatbot-api.model"; // localStorage: not a secret

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), temperature: $("temperature"), maxTokens: $("max-tokens"),
  system: $("system"), banner: $("banner"), messages: $("messages"), empty: $("empty"),
  composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  conversations: $("conversations"), newChat: $("new-chat"), keyButton: $("key-button"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"),
  keyReason: $("key-reason"), keyForget: $("key-forget"),
};

let current = null; // the open conversation: {id, metadata}
let streaming = null; // the AbortController of the reply being streamed

// ---- Markdown, without letting the model's text become markup -------------------------------

const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
// Raw HTML in a reply is shown as the text it is; DOMPurify then checks what marked made.
marked.use({ gfm: true, breaks: true, renderer: { html: (token) => escapeHtml(token.text) } });

function renderMarkdown(element, text) {
  let html;
  try {
    html = marked.parse(text);
  } catch {
    // Markdown the renderer cannot take (nesting thousands deep): shown as the text it is.
    element.textContent = text;
    return;
  }
  element.innerHTML = DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
  for (const link of element.querySelectorAll("a")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
}

// Follow a growing reply only while the reader is at the bottom: scrolled up, they stay put.
function atBottom() {
  const box = ui.messages;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

// ---- The API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, when the server said
  }
}

function headers() {
  const sent = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) sent.Authorization = `Bearer ${key}`;
  return sent;
}

function waitOf(response) {
  const ms = Number(response.headers.get("retry-after-ms"));
  if (ms > 0) return ms / 1000;
  const seconds = Number(response.headers.get("retry-after"));
  return seconds > 0 ? seconds : null;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code;
    }
  } catch {
    // not our envelope (a proxy's page): the status line says what there is to say
  }
  return new ApiError(response.status, message, code, waitOf(response));
}

async function api(path, { method = "GET", body, signal } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method, headers: headers(), signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The connection to the server was lost.", "connection_lost", null);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

// ---- Errors, said plainly -----------------------------------------------------------------

function describe(error) {
  switch (error.status) {
    case 0: return "The connection to the server was lost. Check that it is running, then try again.";
    case 401: return `The server refused the API key: ${error.message}`;
    case 404: return `Not found: ${error.message}`;
    case 429: {
      const said = /try again/i.test(error.message);
      const wait = error.retryAfter && !said ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : "";
      return `Rate limit reached: ${error.message}${wait}`;
    }
    case 503: return `The server cannot answer right now (503): ${error.message}`;
    default: return error.status ? `Error ${error.status}: ${error.message}` : error.message;
  }
}

function showError(error) {
  ui.banner.textContent = describe(error);
  ui.banner.dataset.status = String(error.status ?? "");
  ui.banner.hidden = false;
  if (error.status === 401) askForKey(error.message);
}

function clearError() {
  ui.banner.hidden = true;
  ui.banner.textContent = "";
}

// ---- The key ------------------------------------------------------------------------------

function askForKey(reason) {
  ui.keyReason.textContent = reason
    ? `The server needs a valid API key (${reason}).`
    : "This server needs an API key.";
  ui.keyInput.value = "";
  ui.keyButton.hidden = false;
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

ui.keyForm.addEventListener("submit", (event) => {
  const key = ui.keyInput.value.trim();
  // A header carries printable ASCII only: a pasted "…" would fail every request.
  if (/[^\x21-\x7e]/.test(key)) {
    event.preventDefault();
    ui.keyReason.textContent = "An API key is letters, digits and punctuation, without spaces.";
    return;
  }
  if (key) sessionStorage.setItem(KEY, key);
  ui.keyInput.value = "";
  clearError();
  start();
});
ui.keyForget.addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  ui.keyInput.value = "";
});
ui.keyButton.addEventListener("click", () => askForKey(null));

// ---- Models -------------------------------------------------------------------------------

async function loadModels() {
  const listed = await json("/v1/models");
  const chosen = localStorage.getItem(MODEL);
  ui.model.replaceChildren(...listed.data.map((model) => new Option(model.id, model.id)));
  if (listed.data.some((model) => model.id === chosen)) ui.model.value = chosen;
}
ui.model.addEventListener("change", () => localStorage.setItem(MODEL, ui.model.value));

// ---- Conversations ------------------------------------------------------------------------

const titleOf = (conversation) => conversation.metadata?.title || "Untitled chat";

let more = null; // the "more" entry when the server has older conversations

async function loadConversations(after = null) {
  const query = new URLSearchParams({ limit: "50" });
  if (after) query.set("after", after);
  const listed = await json(`/v1/conversations?${query}`);
  more?.remove();
  more = null;
  const entries = listed.data.map(conversationEntry);
  if (after) ui.conversations.append(...entries);
  else ui.conversations.replaceChildren(...entries);
  if (listed.has_more && listed.last_id) {
    more = document.createElement("li");
    more.append(button("Older chats…", "title", () => refreshConversations(listed.last_id)));
    ui.conversations.append(more);
  }
}

function entryOf(id) {
  return [...ui.conversations.children].find((entry) => entry.dataset.id === id);
}

function conversationEntry(conversation) {
  const entry = document.createElement("li");
  entry.dataset.id = conversation.id;
  if (current && current.id === conversation.id) entry.classList.add("current");
  const open = button(titleOf(conversation), "title", () => openConversation(conversation));
  open.title = titleOf(conversation);
  const rename = button("✎", "tool", () => startRename(entry, conversation));
  rename.title = "Rename";
  rename.setAttribute("aria-label", "Rename");
  const remove = button("✕", "tool", () => removeConversation(remove, conversation));
  remove.title = "Delete";
  remove.setAttribute("aria-label", "Delete");
  entry.append(open, rename, remove);
  return entry;
}

function button(label, className, onClick) {
  const made = document.createElement("button");
  made.type = "button";
  made.className = className;
  made.textContent = label;
  made.addEventListener("click", onClick);
  return made;
}

function startRename(entry, conversation) {
  const field = document.createElement("input");
  field.value = titleOf(conversation);
  field.maxLength = 100;
  field.setAttribute("aria-label", "New name");
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = field.value.trim();
    if (save && title && title !== titleOf(conversation)) {
      try {
        const metadata = { ...conversation.metadata, title };
        await json(`/v1/conversations/${conversation.id}`, { method: "POST", body: { metadata } });
        conversation.metadata = metadata;
        if (current && current.id === conversation.id) current.metadata = metadata;
      } catch (error) {
        showError(error);
      }
    }
    entry.replaceWith(conversationEntry(conversation));
  };
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  field.addEventListener("blur", () => finish(true));
  entry.replaceChildren(field);
  field.focus();
  field.select();
}

async function removeConversation(control, conversation) {
  // Two clicks: the first arms the button for three seconds.
  if (!control.classList.contains("armed")) {
    control.classList.add("armed");
    control.textContent = "Delete?";
    setTimeout(() => {
      control.classList.remove("armed");
      control.textContent = "✕";
    }, 3000);
    return;
  }
  try {
    await api(`/v1/conversations/${conversation.id}`, { method: "DELETE" });
    entryOf(conversation.id)?.remove();
    if (current && current.id === conversation.id) newChat();
  } catch (error) {
    showError(error);
  }
}

async function refreshConversations(after = null) {
  try {
    await loadConversations(after);
  } catch (error) {
    showError(error);
  }
}

async function allItems(conversationId) {
  const items = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ order: "asc", limit: "100" });
    if (after) query.set("after", after);
    const page = await json(`/v1/conversations/${conversationId}/items?${query}`);
    items.push(...page.data);
    if (!page.has_more || !page.last_id) return items;
    after = page.last_id;
  }
}

const textOf = (item) =>
  (Array.isArray(item.content) ? item.content : [{ text: item.content }])
    .map((part) => part.text ?? part.refusal ?? "")
    .join("");

let opening = 0; // which click on a conversation the page is showing

async function openConversation(conversation) {
  streaming?.abort(); // the reply in progress stops, as it would with Stop
  clearError();
  current = conversation;
  const mine = ++opening;
  highlightCurrent();
  clearMessages();
  try {
    const items = await allItems(conversation.id);
    if (mine !== opening) return; // another conversation was clicked meanwhile
    for (const item of items) {
      if (item.type !== "message" || !["user", "assistant"].includes(item.role)) continue;
      addMessage(item.role, textOf(item)).dataset.stored = "true";
    }
  } catch (error) {
    if (mine === opening) showError(error);
  }
}

function highlightCurrent() {
  for (const entry of ui.conversations.children) {
    entry.classList.toggle("current", Boolean(current) && entry.dataset.id === current.id);
  }
}

function newChat() {
  streaming?.abort();
  opening++;
  current = null;
  highlightCurrent();
  clearMessages();
  clearError();
  ui.input.focus();
}
ui.newChat.addEventListener("click", newChat);

// ---- Messages -----------------------------------------------------------------------------

function clearMessages() {
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = false;
}

function addMessage(role, text) {
  ui.empty.hidden = true;
  const message = document.createElement("article");
  message.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  message.append(label, body);
  message.raw = text;
  if (role === "user") body.textContent = text;
  else renderMarkdown(body, text);
  if (role === "assistant") {
    const footer = document.createElement("div");
    footer.className = "footer";
    const stats = document.createElement("span");
    stats.className = "stats";
    const copy = button("Copy", "copy", () => copyText(message.raw, copy));
    const again = button("Regenerate", "regenerate", () => regenerate());
    footer.append(stats, copy, again);
    message.append(footer);
  }
  ui.messages.append(message);
  ui.messages.scrollTop = ui.messages.scrollHeight;
  return message;
}

async function copyText(text, control) {
  try {
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(text);
    } else {
      // Over plain HTTP from another machine there is no clipboard API: copy a selection.
      const scratch = document.createElement("textarea");
      scratch.value = text;
      document.body.append(scratch);
      scratch.select();
      const copied = document.execCommand("copy");
      scratch.remove();
      if (!copied) throw new Error("not copied");
    }
    control.textContent = "Copied";
  } catch {
    control.textContent = "Copy failed";
  }
  setTimeout(() => { control.textContent = "Copy"; }, 1500);
}

// ---- Sending and streaming ----------------------------------------------------------------

function settings(text) {
  const body = {
    model: ui.model.value,
    input: [{ type: "message", role: "user", content: text }],
    conversation: current.id,
    stream: true,
  };
  const system = ui.system.value.trim();
  if (system) body.instructions = system;
  const temperature = Number.parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const maxTokens = Number.parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_output_tokens = maxTokens;
  return body;
}

// Server-sent events from a fetch body: one {type, ...} object per event.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data || data === "[DONE]") continue;
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        throw new ApiError(502, "The server sent an event the page cannot read.", null, null);
      }
      yield event;
    }
  }
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.model.disabled = busy;
}

// Send a message and stream the reply. False when nothing was sent (the text goes back to
// the box); a reply cut short mid-stream stays on the page, marked.
async function send(text) {
  clearError();
  if (!current) {
    try {
      // Whole characters: half an emoji is an unpaired surrogate the server refuses.
      const title = Array.from(text.replace(/\s+/g, " ").trim()).slice(0, 60).join("");
      current = await json("/v1/conversations", { method: "POST", body: { metadata: { title } } });
    } catch (error) {
      showError(error);
      return false;
    }
    ui.conversations.prepend(conversationEntry(current));
    highlightCurrent();
  }
  const asked = addMessage("user", text);
  const reply = addMessage("assistant", "");
  const body = reply.querySelector(".body");
  const stats = reply.querySelector(".stats");
  const controller = new AbortController();
  streaming = controller;
  setBusy(true);
  const started = performance.now();
  let firstAt = null;
  let replyText = "";
  let scheduled = false;
  let answered = false; // the server took the request: what follows is the stream's fate
  let renderCost = 0;
  const paint = () => {
    scheduled = false;
    const follow = atBottom();
    const before = performance.now();
    reply.raw = replyText;
    renderMarkdown(body, replyText);
    renderCost = performance.now() - before;
    if (follow) ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    // A long reply costs more to draw: draw it less often, never more than a frame's worth.
    setTimeout(() => requestAnimationFrame(paint), Math.min(renderCost * 4, 500));
  };
  try {
    const response = await api("/v1/responses", {
      method: "POST", body: settings(text), signal: controller.signal,
    });
    answered = true;
    for await (const event of events(response)) {
      if (event.type === "response.output_text.delta") {
        firstAt ??= performance.now();
        replyText += event.delta;
        schedule();
      } else if (event.type === "response.completed" || event.type === "response.incomplete") {
        paint();
        stats.textContent = summary(event.response, started, firstAt);
        asked.dataset.stored = reply.dataset.stored = "true";
      } else if (event.type === "response.failed") {
        throw new ApiError(500, event.response?.error?.message || "The model failed.", null, null);
      } else if (event.type === "error") {
        const error = event.error ?? event;
        throw new ApiError(Number(error.status) || 500, error.message || "The stream failed.", error.code, null);
      }
    }
    paint();
    if (!reply.dataset.stored) throw new ApiError(0, "The stream ended early.", "connection_lost", null);
  } catch (error) {
    if (error.name === "AbortError") {
      paint();
      stats.textContent = `stopped by you after ${seconds(performance.now() - started)}`;
    } else if (!answered) {
      // Refused before anything was made (a key, a limit, a model): as if never sent.
      asked.remove();
      reply.remove();
      ui.empty.hidden = ui.messages.querySelector(".message") !== null;
      showError(error);
      return false;
    } else {
      paint();
      reply.classList.add("failed");
      stats.textContent = "no reply";
      // A stream cut by the network rejects its read with a TypeError.
      showError(error instanceof ApiError ? error : new ApiError(0, error.message, null, null));
    }
  } finally {
    if (streaming === controller) {
      streaming = null;
      setBusy(false);
    }
  }
  return true;
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

function summary(response, started, firstAt) {
  const usage = response.usage || {};
  const parts = [];
  if (firstAt !== null) parts.push(`first token ${Math.round(firstAt - started)} ms`);
  // Decoding speed: the tokens after the first, over the time since the first.
  const decoding = (performance.now() - (firstAt ?? started)) / 1000;
  if (usage.output_tokens > 1 && decoding > 0) {
    parts.push(`${((usage.output_tokens - 1) / decoding).toFixed(1)} tokens/s`);
  }
  if (usage.input_tokens !== undefined) {
    parts.push(`${usage.input_tokens} in · ${usage.output_tokens} out tokens`);
  }
  if (response.status === "incomplete") {
    parts.push(`cut short (${response.incomplete_details?.reason ?? "incomplete"})`);
  }
  return parts.join(" · ");
}

// Regenerate the last reply: the same message is sent again. When the server kept the last
// exchange (it keeps only finished ones), that exchange leaves the conversation first, so
// that the server's copy and the page agree.
async function regenerate() {
  if (streaming || !current) return;
  clearError();
  const shown = [...ui.messages.querySelectorAll(".message")];
  const lastUser = shown.findLastIndex((message) => message.classList.contains("user"));
  if (lastUser < 0) return;
  const text = shown[lastUser].raw;
  try {
    if (shown[lastUser].dataset.stored) {
      const items = await allItems(current.id);
      const from = items.findLastIndex((item) => item.type === "message" && item.role === "user");
      for (const item of from < 0 ? [] : items.slice(from)) {
        await api(`/v1/conversations/${current.id}/items/${item.id}`, { method: "DELETE" });
      }
    }
  } catch (error) {
    showError(error);
    return;
  }
  for (const message of shown.slice(lastUser)) message.remove();
  if (!(await send(text))) ui.input.value = text;
}

ui.stop.addEventListener("click", () => streaming?.abort());

ui.composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || streaming) return;
  ui.input.value = "";
  if (!(await send(text)) && !ui.input.value) ui.input.value = text; // nothing is lost
  ui.input.focus();
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

// ---- Start --------------------------------------------------------------------------------

async function start() {
  try {
    await loadModels();
    await loadConversations();
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error);
  }
}

start();
