// hearth's chat page: no dependencies, no build step. Talks to this server's OpenAI API,
// streams replies (rendered as Markdown with code highlighting), keeps the conversation in
// localStorage, and shows time to first token and tokens per second.
"use strict";

const STORE = "hearth.chat.v1";
const $ = (id) => document.getElementById(id);
const state = load();
let controller = null;

function load() {
  const fallback = { messages: [], model: "", settings: {}, key: "" };
  try { return Object.assign(fallback, JSON.parse(localStorage.getItem(STORE)) || {}); }
  catch { return fallback; }
}
function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch (e) {
    // Images can outgrow the browser's storage: the chat goes on, unsaved.
    status("This chat is too large to keep in the browser's storage.");
  }
}
function status(text) { $("status").textContent = text; }

// --- Markdown: escape first, then a small, safe subset. ---------------------------------
function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
const KEYWORDS = new Set(("fn let mut pub struct enum impl trait use mod match if else for while loop return " +
  "def class import from as with try except finally raise lambda yield async await const var function new " +
  "in of true false null None True False self this int float str bool void static public private package")
  .split(" "));
function highlight(code) {
  const token = /(\/\/[^\n]*|#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\b\d+(?:\.\d+)?\b|\b[A-Za-z_]\w*\b)/g;
  let out = "", last = 0;
  for (const m of code.matchAll(token)) {
    out += escapeHtml(code.slice(last, m.index));
    const t = m[0];
    let cls = null;
    if (t.startsWith("//") || t.startsWith("#")) cls = "comment";
    else if (t[0] === '"' || t[0] === "'") cls = "string";
    else if (/^\d/.test(t)) cls = "number";
    else if (KEYWORDS.has(t)) cls = "keyword";
    out += cls ? `<span class="tok-${cls}">${escapeHtml(t)}</span>` : escapeHtml(t);
    last = m.index + t.length;
  }
  return out + escapeHtml(code.slice(last));
}
function inline(text) {
  return escapeHtml(text)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
    .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" rel="noopener noreferrer" target="_blank">$1</a>');
}
function markdown(text) {
  const parts = text.split(/```/);
  let html = "";
  parts.forEach((part, i) => {
    if (i % 2 === 1) {                       // a fenced block (possibly still open)
      const newline = part.indexOf("\n");
      const code = newline >= 0 ? part.slice(newline + 1) : "";
      html += `<pre><code>${highlight(code.replace(/\n$/, ""))}</code></pre>`;
      return;
    }
    let list = null;
    const close = () => { if (list) { html += `</${list}>`; list = null; } };
    for (const line of part.split("\n")) {
      let m;
      if ((m = line.match(/^(#{1,6})\s+(.*)/))) { close(); html += `<h${m[1].length + 2}>${inline(m[2])}</h${m[1].length + 2}>`; }
      else if ((m = line.match(/^\s*[-*]\s+(.*)/))) { if (list !== "ul") { close(); html += "<ul>"; list = "ul"; } html += `<li>${inline(m[1])}</li>`; }
      else if ((m = line.match(/^\s*\d+[.)]\s+(.*)/))) { if (list !== "ol") { close(); html += "<ol>"; list = "ol"; } html += `<li>${inline(m[1])}</li>`; }
      else if (line.trim() === "") { close(); }
      else { close(); html += `<p>${inline(line)}</p>`; }
    }
    close();
  });
  return html;
}

// --- The conversation on screen. ----------------------------------------------------------
function render(message, element) {
  const el = element || document.createElement("div");
  el.className = `message ${message.role}${message.error ? " error" : ""}`;
  if (message.role === "user") {
    // Text, then the images it carried (content parts, as sent).
    const parts = Array.isArray(message.content) ? message.content : [{ type: "text", text: message.content }];
    el.textContent = parts.filter((p) => p.type === "text").map((p) => p.text).join("\n");
    for (const p of parts.filter((p) => p.type === "image_url")) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = "attached image";
      img.src = p.image_url.url;
      el.appendChild(document.createElement("br"));
      el.appendChild(img);
    }
  } else {
    let html = "";
    if (message.reasoning) html += `<details><summary>Reasoning</summary>${markdown(message.reasoning)}</details>`;
    html += message.error ? escapeHtml(message.error) : markdown(message.content || "");
    el.innerHTML = html;
  }
  if (!element) $("messages").appendChild(el);
  $("messages").scrollTop = $("messages").scrollHeight;
  return el;
}
function redraw() {
  $("messages").innerHTML = "";
  state.messages.forEach((m) => render(m));
}

// --- The API. -----------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}
async function askForKey() {
  const dialog = $("key-dialog");
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  state.key = $("api-key").value.trim();
  save();
}
async function api(path, options = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const response = await fetch(path, { ...options, headers: headers() });
    if (response.status !== 401) return response;
    await askForKey();
  }
  throw new Error("the API key was not accepted");
}
async function loadModels() {
  try {
    const response = await api("/v1/models");
    const list = (await response.json()).data || [];
    const select = $("model");
    select.innerHTML = "";
    for (const m of list) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.state ? `${m.id} (${m.state})` : m.id;
      option.dataset.vision = String((m.capabilities || []).includes("vision"));
      select.appendChild(option);
    }
    if (list.some((m) => m.id === state.model)) select.value = state.model;
    state.model = select.value;
    showAttach();
    status(list.length ? "Ready." : "This server has no models.");
  } catch (e) {
    status(`Could not list models: ${e.message}`);
  }
}

function settings() {
  const s = {
    system: $("system").value, temperature: $("temperature").value, top_p: $("top-p").value,
    max_tokens: $("max-tokens").value, json: $("json-mode").checked,
  };
  state.settings = s;
  save();
  return s;
}
function request(s) {
  const messages = [];
  if (s.system.trim()) messages.push({ role: "system", content: s.system });
  for (const m of state.messages) {
    if (!m.error && (m.role === "user" || m.content)) messages.push({ role: m.role, content: m.content });
  }
  const body = {
    model: state.model, messages, stream: true, stream_options: { include_usage: true },
    temperature: Number(s.temperature), top_p: Number(s.top_p),
  };
  if (s.max_tokens) body.max_tokens = Number(s.max_tokens);
  if (s.json) body.response_format = { type: "json_object" };
  return body;
}

// --- Images for models with vision. -------------------------------------------------------
let pending = [];
function showAttach() {
  const option = $("model").selectedOptions[0];
  const vision = !!option && option.dataset.vision === "true";
  $("attach-button").hidden = !vision;
  if (!vision) { pending = []; drawPending(); }
}
function drawPending() {
  const box = $("attached");
  box.innerHTML = "";
  pending.forEach((url, i) => {
    const img = document.createElement("img");
    img.src = url;
    img.alt = `image ${i + 1} (click to remove)`;
    img.title = "Click to remove";
    img.addEventListener("click", () => { pending.splice(i, 1); drawPending(); });
    box.appendChild(img);
  });
}
function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function send(text) {
  const s = settings();
  const content = pending.length
    ? [{ type: "text", text }, ...pending.map((url) => ({ type: "image_url", image_url: { url } }))]
    : text;
  pending = [];
  drawPending();
  state.messages.push({ role: "user", content });
  render(state.messages[state.messages.length - 1]);
  const reply = { role: "assistant", content: "", reasoning: "" };
  state.messages.push(reply);
  const element = render(reply);
  save();
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let first = null, usage = null;
  status("Waiting for the first token…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request(s)), signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
          if (delta.content || delta.reasoning_content) {
            if (first === null) first = performance.now();
            reply.content += delta.content || "";
            reply.reasoning += delta.reasoning_content || "";
            render(reply, element);
          }
        }
      }
    }
    const seconds = (performance.now() - (first ?? started)) / 1000;
    const tokens = usage ? usage.completion_tokens : 0;
    status(`TTFT ${first === null ? "–" : Math.round(first - started)} ms · ` +
           `${tokens} tokens · ${seconds > 0 ? (tokens / seconds).toFixed(1) : "–"} tok/s`);
  } catch (e) {
    if (e.name === "AbortError") {
      status(`Stopped after ${reply.content.length} characters.`);
    } else {
      reply.error = e.message;
      render(reply, element);
      status("The request failed.");
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    save();
  }
}

// --- Wiring. ------------------------------------------------------------------------------
function init() {
  const s = state.settings;
  if (s.system !== undefined) $("system").value = s.system;
  if (s.temperature !== undefined) $("temperature").value = s.temperature;
  if (s.top_p !== undefined) $("top-p").value = s.top_p;
  if (s.max_tokens !== undefined) $("max-tokens").value = s.max_tokens;
  $("json-mode").checked = !!s.json;
  redraw();
  $("model").addEventListener("change", () => { state.model = $("model").value; save(); showAttach(); });
  $("attach-button").addEventListener("click", () => $("attach").click());
  $("attach").addEventListener("change", async () => {
    for (const file of $("attach").files) {
      try {
        pending.push(await readImage(file));
      } catch (e) {
        status(`Could not read ${file.name}: ${e.message}`);
      }
    }
    $("attach").value = "";
    drawPending();
  });
  $("toggle-settings").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    state.messages = [];
    save();
    redraw();
    status("New chat.");
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  loadModels();
}
init();
