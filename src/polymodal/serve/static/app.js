// The polymodal web page: plain JS, no build step, no network beyond this server's /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, file: null, ops: new Set(), index: false, previewUrl: null };
// the chat panel's conversation: what /v1/chat is sent each turn (the server keeps no state)
const chat = { messages: [], images: [], pending: null, busy: false };

// ----------------------------------------------------------------------------------- API + errors

class ApiFailure extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, form) {
  const headers = {};
  if (state.key) headers["X-API-Key"] = state.key;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: form });
  } catch (e) {
    throw new ApiFailure(0, "network", `${path}: the server did not answer (${e.message})`);
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON: handled below */ }
  if (!resp.ok) {
    const err = body && body.error;
    if (resp.status === 401) $("key-panel").hidden = false;
    throw new ApiFailure(resp.status, err ? err.code : "http_" + resp.status,
      err && err.message ? err.message : `${path}: HTTP ${resp.status}`);
  }
  if (body === null) throw new ApiFailure(resp.status, "bad_response", `${path}: the answer was not JSON`);
  return body;
}

function showError(e) {
  const el = $("error");
  el.textContent = e instanceof ApiFailure ? e.message : String(e && e.message ? e.message : e);
  el.dataset.code = e instanceof ApiFailure ? e.code : "client";
  el.hidden = false;
}

function clearError() {
  const el = $("error");
  el.textContent = "";
  delete el.dataset.code;
  el.hidden = true;
}

// Run an action, showing its progress and any error; mark `el` busy/done for scripts and tests.
async function act(el, label, fn) {
  el.dataset.state = "busy";
  $("status").textContent = label + "\u2026";
  try {
    await fn();
    el.dataset.state = "done";
    $("status").textContent = "";
  } catch (e) {
    el.dataset.state = "error";
    $("status").textContent = "";
    showError(e);
  }
}

// ------------------------------------------------------------------------------------- start-up

async function init() {
  try {
    const health = await api("GET", "/v1/health");
    state.index = !!health.index;
    const models = await api("GET", "/v1/models");
    const m = models.models[0];
    state.ops = new Set(m.operations);
    let info = `${m.name} \u00b7 ${m.model_type}`;
    if (models.index) info += ` \u00b7 index: ${models.index.images} images, ${models.index.texts} texts`;
    $("model-info").textContent = info;
    $("key-panel").hidden = state.key === null;  // keep it shown once a key was needed
    clearError();
    layout();
    document.body.dataset.ready = "true";
  } catch (e) {
    $("model-info").textContent = "not connected";
    showError(e);
  }
}

function layout() {
  const can = (op) => state.ops.has(op);
  const search = can("search") && state.index;
  $("caption-box").hidden = !can("caption");
  $("answer-box").hidden = !can("answer");
  $("near-texts-box").hidden = !search;
  $("image-panel").hidden = !(can("caption") || can("answer") || search);
  $("search-panel").hidden = !search;
  $("chat-panel").hidden = !can("chat");
  updateButtons();
}

function updateButtons() {
  const has = state.file !== null;
  $("caption-btn").disabled = !has;
  $("answer-btn").disabled = !has;
  $("near-texts-btn").disabled = !has;
}

// ------------------------------------------------------------------------------------ image panel

function imageForm() {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  return form;
}

function setImage(file) {
  if (!file) return;
  clearError();
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const img = $("preview");
  img.src = state.previewUrl;
  img.hidden = false;
  $("caption").textContent = "";
  $("answer").textContent = "";
  $("near-texts").replaceChildren();
  updateButtons();
  // auto-actions: whatever the model can tell about an image without more input
  if (state.ops.has("caption")) doCaption();
  if (!$("near-texts-box").hidden) doNearTexts();
  if (state.ops.has("answer") && $("question").value.trim()) doAnswer();
}

function doCaption() {
  const out = $("caption");
  out.textContent = "";
  return act(out, "captioning", async () => {
    out.textContent = (await api("POST", "/v1/caption", imageForm())).caption;
  });
}

function doAnswer() {
  const out = $("answer");
  out.textContent = "";
  return act(out, "answering", async () => {
    const form = imageForm();
    form.append("question", $("question").value);
    out.textContent = (await api("POST", "/v1/answer", form)).answer;
    if (state.ops.has("explain")) await doExplain();
  });
}

// The answer's heat-map: the uploaded image drawn on a canvas, each grid cell tinted red by its weight.
async function doExplain() {
  const box = $("heatmap-box");
  const canvas = $("heatmap");
  box.hidden = true;
  const form = imageForm();
  form.append("question", $("question").value);
  const { heatmap } = await api("POST", "/v1/explain", form);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage($("preview"), 0, 0, canvas.width, canvas.height);
  const rows = heatmap.length, cols = heatmap[0].length;
  const cw = canvas.width / cols, ch = canvas.height / rows;
  heatmap.forEach((row, r) => row.forEach((v, c) => {
    ctx.fillStyle = `rgba(255, 0, 0, ${(0.6 * v).toFixed(3)})`;
    ctx.fillRect(c * cw, r * ch, cw, ch);
  }));
  canvas.dataset.cells = String(rows * cols);
  box.hidden = false;
}

function doNearTexts() {
  const list = $("near-texts");
  list.replaceChildren();
  return act(list, "searching texts", async () => {
    const form = imageForm();
    form.append("target", "text");
    form.append("k", "5");
    const { results } = await api("POST", "/v1/search", form);
    for (const hit of results) {
      const li = document.createElement("li");
      li.textContent = `${hit.text} `;
      const score = document.createElement("small");
      score.textContent = `(${hit.score.toFixed(3)})`;
      li.append(score);
      li.dataset.score = String(hit.score);
      list.append(li);
    }
    if (!results.length) list.textContent = "the index holds no texts";
  });
}

$("image-input").addEventListener("change", (ev) => setImage(ev.target.files[0]));
$("caption-btn").addEventListener("click", () => { clearError(); doCaption(); });
$("near-texts-btn").addEventListener("click", () => { clearError(); doNearTexts(); });
$("answer-box").addEventListener("submit", (ev) => {
  ev.preventDefault();
  clearError();
  if (!state.file) { showError("choose an image first"); return; }
  doAnswer();
});

const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (ev) => {
  const file = ev.dataTransfer && ev.dataTransfer.files[0];
  if (file) setImage(file); else showError("drop an image file");
});

// ----------------------------------------------------------------------------------- text search

function fileUrl(path) {
  return "/v1/files/" + path.split("/").map(encodeURIComponent).join("/");
}

function thumbnail(hit) {
  const fig = document.createElement("figure");
  fig.dataset.path = hit.path;
  fig.dataset.rank = String(hit.rank);
  fig.dataset.score = String(hit.score);
  const img = document.createElement("img");
  img.alt = hit.path;
  img.loading = "eager";
  img.dataset.path = hit.path;
  if (state.key) {
    // <img src> cannot send a header: fetch with the key, show the blob
    api_blob(fileUrl(hit.path)).then((url) => { img.src = url; }, showError);
  } else {
    img.src = fileUrl(hit.path);
    img.addEventListener("error", () => showError(`could not load ${hit.path}`), { once: true });
  }
  const cap = document.createElement("figcaption");
  cap.textContent = `${hit.rank}. ${hit.path} \u00b7 ${hit.score.toFixed(3)}`;
  fig.append(img, cap);
  return fig;
}

async function api_blob(path) {
  const resp = await fetch(path, { headers: state.key ? { "X-API-Key": state.key } : {} });
  if (!resp.ok) {
    let msg = `${path}: HTTP ${resp.status}`;
    try { msg = (await resp.json()).error.message; } catch (e) { /* keep the status line */ }
    throw new ApiFailure(resp.status, "http_" + resp.status, msg);
  }
  return URL.createObjectURL(await resp.blob());
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  clearError();
  const grid = $("grid");
  grid.replaceChildren();
  act(grid, "searching", async () => {
    const form = new FormData();
    form.append("text", $("query").value);
    form.append("k", $("k").value || "8");
    form.append("target", "image");
    const { results } = await api("POST", "/v1/search", form);
    grid.append(...results.map(thumbnail));
    if (!results.length) grid.textContent = "no images in the index";
  });
});

// ------------------------------------------------------------------------------------------ chat

const IMAGE_MARKER = "<image>";

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function chatBubble(role, text, imageUrl) {
  const li = document.createElement("li");
  li.dataset.role = role;
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = "the attached image";
    li.append(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  li.append(span);
  $("chat-log").append(li);
  return li;
}

// POST /v1/chat with stream=true; call onDelta for each text piece; resolve to the whole answer.
async function chatStream(body, onDelta) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  let resp;
  try {
    resp = await fetch("/v1/chat", { method: "POST", headers, body: JSON.stringify(body) });
  } catch (e) {
    throw new ApiFailure(0, "network", `/v1/chat: the server did not answer (${e.message})`);
  }
  if (!resp.ok) {
    let err = null;
    try { err = (await resp.json()).error; } catch (e) { /* not JSON */ }
    if (resp.status === 401) $("key-panel").hidden = false;
    throw new ApiFailure(resp.status, err ? err.code : "http_" + resp.status, err && err.message ? err.message : `/v1/chat: HTTP ${resp.status}`);
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      const msg = JSON.parse(data);
      if (msg.error) throw new ApiFailure(resp.status, msg.error.code, msg.error.message);
      if (msg.done) return msg.text;
      text += msg.delta;
      onDelta(msg.delta, text);
    }
  }
  throw new ApiFailure(resp.status, "bad_response", "/v1/chat: the stream ended before the answer was done");
}

async function sendChat() {
  const input = $("chat-input");
  let text = input.value.trim();
  if (!text) { showError("type a message first"); return; }
  if (chat.busy) return;
  const image = chat.pending;
  if (image && !text.includes(IMAGE_MARKER)) text = `${IMAGE_MARKER}\n${text}`;
  const messages = [...chat.messages, { role: "user", content: text }];
  const images = image ? [...chat.images, image] : chat.images;
  chatBubble("user", input.value.trim(), image);
  const reply = chatBubble("assistant", "");
  const out = reply.querySelector(".text");
  input.value = "";
  chat.busy = true;
  $("chat-send").disabled = true;
  await act(reply, "answering", async () => {
    try {
      const full = await chatStream({ messages, images, stream: true }, (_, sofar) => { out.textContent = sofar; });
      out.textContent = full;
      chat.messages = [...messages, { role: "assistant", content: full }];
      chat.images = images;
      chat.pending = null;
      $("chat-attached").textContent = "";
    } catch (e) {
      input.value = input.value || text.replace(`${IMAGE_MARKER}\n`, "");
      throw e;
    }
  });
  chat.busy = false;
  $("chat-send").disabled = false;
}

$("chat-image").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  clearError();
  try {
    chat.pending = await readDataUrl(file);
    $("chat-attached").textContent = `attached: ${file.name}`;
  } catch (e) {
    showError(e);
  }
  ev.target.value = "";
});
$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  clearError();
  sendChat();
});
$("chat-reset").addEventListener("click", () => {
  chat.messages = [];
  chat.images = [];
  chat.pending = null;
  $("chat-attached").textContent = "";
  $("chat-log").replaceChildren();
  clearError();
});

// ------------------------------------------------------------------------------------------ key

$("key-save").addEventListener("click", () => {
  state.key = $("api-key").value || null;
  init();
});
$("api-key").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("key-save").click(); });

init();
