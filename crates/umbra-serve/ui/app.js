// umbra's web UI: plain JS over the native job API (POST /v1/jobs, SSE /v1/jobs/ID/events via fetch so the
// API key header works), with the A1111 sampler list and the OpenAI model list.
"use strict";
const $ = (id) => document.getElementById(id);
let currentJob = null;

function headers(json) {
  const h = {};
  const key = $("apikey").value || localStorage.getItem("umbra-key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...headers(!!opts.body), ...(opts.headers || {}) } });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { detail: text }; }
  if (!r.ok) throw new Error((body && (body.detail || (body.error && body.error.message))) || r.statusText);
  return body;
}

function setStatus(s) { $("status").textContent = s; }
function setBar(f) { $("bar").style.width = Math.round(f * 100) + "%"; }

async function loadLists() {
  try {
    const models = await api("/v1/models");
    $("model").innerHTML = models.data.map((m) => `<option>${m.id}</option>`).join("");
    const samplers = await api("/sdapi/v1/samplers");
    $("sampler").innerHTML = `<option value="">(model default)</option>` +
      samplers.map((s) => `<option value="${s.aliases[0]}">${s.name}</option>`).join("");
    setStatus("ready");
  } catch (e) {
    setStatus("cannot list models: " + e.message + " (set the API key?)");
  }
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

function updateMode() {
  const m = mode();
  $("imgopts").hidden = m === "txt2img";
  $("paint").hidden = m !== "inpaint";
  $("maskcanvas").style.display = m === "inpaint" ? "" : "none";
  if (m === "inpaint" && $("strength").value === "0.75") $("strength").value = "1";
}

// --- image upload and mask painting ---
let uploaded = null;
$("upload").addEventListener("change", () => {
  const f = $("upload").files[0];
  if (!f) return;
  const img = new Image();
  img.onload = () => {
    uploaded = img;
    for (const c of [$("imgcanvas"), $("maskcanvas")]) { c.width = img.width; c.height = img.height; }
    $("imgcanvas").getContext("2d").drawImage(img, 0, 0);
    clearMask();
    $("width").value = Math.max(8, Math.floor(img.width / 8) * 8);
    $("height").value = Math.max(8, Math.floor(img.height / 8) * 8);
  };
  img.src = URL.createObjectURL(f);
});
function clearMask() {
  const c = $("maskcanvas"), g = c.getContext("2d");
  g.fillStyle = "black"; g.fillRect(0, 0, c.width, c.height);
}
$("clearmask").addEventListener("click", clearMask);
let painting = false;
function paintAt(ev) {
  const c = $("maskcanvas"), r = c.getBoundingClientRect();
  const x = (ev.clientX - r.left) * c.width / r.width, y = (ev.clientY - r.top) * c.height / r.height;
  const g = c.getContext("2d");
  g.fillStyle = "white"; g.beginPath(); g.arc(x, y, +$("brush").value * c.width / r.width / 2, 0, 7); g.fill();
}
$("maskcanvas").addEventListener("pointerdown", (e) => { painting = true; paintAt(e); });
$("maskcanvas").addEventListener("pointermove", (e) => { if (painting) paintAt(e); });
window.addEventListener("pointerup", () => { painting = false; });
const b64 = (canvas) => canvas.toDataURL("image/png").split(",")[1];

// --- generation ---
function request() {
  const seed = parseInt($("seed").value, 10);
  const req = {
    model: $("model").value || undefined,
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    steps: +$("steps").value, guidance: +$("guidance").value, batch: +$("batch").value,
    width: +$("width").value, height: +$("height").value,
    seed: Number.isFinite(seed) && seed >= 0 ? seed : undefined,
    sampler: $("sampler").value || undefined,
    scheduler: $("scheduler").value,
    preview_every: Math.max(1, Math.round(+$("steps").value / 10)),
  };
  const m = mode();
  if (m !== "txt2img") {
    if (!uploaded) throw new Error("upload an image first");
    req.init_image = b64($("imgcanvas"));
    req.strength = +$("strength").value;
    if (m === "inpaint") req.mask = b64($("maskcanvas"));
  }
  return req;
}

async function generate() {
  if (currentJob) return;
  let req;
  try { req = request(); } catch (e) { setStatus(e.message); return; }
  $("generate").disabled = true; $("cancel").disabled = false; setBar(0);
  try {
    const job = await api("/v1/jobs", { method: "POST", body: JSON.stringify(req) });
    currentJob = job.id;
    setStatus(`queued (${job.id})`);
    await follow(job.id, req);
  } catch (e) {
    setStatus("error: " + e.message);
  } finally {
    currentJob = null; $("generate").disabled = false; $("cancel").disabled = true;
  }
}

// Read the job's Server-Sent Events with fetch (EventSource cannot send the Authorization header).
async function follow(id, req) {
  const r = await fetch(`/v1/jobs/${id}/events`, { headers: headers(false) });
  if (!r.ok) throw new Error(`events: HTTP ${r.status}`);
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let ev = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) ev = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const d = JSON.parse(data);
      if (ev === "progress") { setBar(d.step / d.steps); setStatus(`step ${d.step}/${d.steps}`); }
      else if (ev === "preview") { $("preview").src = "data:image/png;base64," + d.image; $("preview").hidden = false; }
      else if (ev === "status") { setStatus(d.status + (d.queue_position != null ? ` (position ${d.queue_position})` : "")); }
      else if (ev === "done") { finished(d, req); return; }
    }
  }
}

function finished(job, req) {
  if (job.status === "done") {
    setBar(1);
    setStatus(`done in ${job.seconds.toFixed(1)} s (seeds ${job.seeds.join(", ")})`);
    job.images.forEach((img, i) => addToGallery(img, { ...req, seed: job.seeds[i], batch: 1 }, job.infotexts[i]));
    $("preview").hidden = true;
  } else {
    setStatus(job.status + (job.error ? ": " + job.error : ""));
  }
}

function addToGallery(img, params, infotext) {
  const fig = document.createElement("figure");
  fig.innerHTML = `<img alt="result" src="data:image/png;base64,${img}"><figcaption></figcaption>`;
  fig.querySelector("figcaption").textContent = infotext;
  fig.title = "click to reuse these parameters";
  fig.addEventListener("click", () => reuse(params));
  $("gallery").prepend(fig);
}

function reuse(p) {
  $("prompt").value = p.prompt; $("negative").value = p.negative_prompt || "";
  $("steps").value = p.steps; $("guidance").value = p.guidance; $("seed").value = p.seed;
  $("width").value = p.width; $("height").value = p.height; $("sampler").value = p.sampler || "";
  if (p.model) $("model").value = p.model;
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
$("cancel").addEventListener("click", async () => {
  const id = currentJob;
  if (!id) return;
  // Say "cancelling…" before the request: its reply can arrive after the job's final event, and must not
  // overwrite the "cancelled" (or "done") that event wrote.
  setStatus("cancelling…");
  try { await api(`/v1/jobs/${id}/cancel`, { method: "POST" }); }
  catch (e) { if (currentJob === id) setStatus("cancel: " + e.message); }
});
$("randseed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 32); });
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
});
for (const r of document.querySelectorAll("input[name=mode]")) r.addEventListener("change", updateMode);
$("apikey").value = localStorage.getItem("umbra-key") || "";
$("apikey").addEventListener("change", () => { localStorage.setItem("umbra-key", $("apikey").value); loadLists(); });
updateMode();
loadLists();
