// ragtune console: plain JavaScript over the REST API, no framework and no build step.
// Every piece of server text is put in the page with textContent (never innerHTML).
"use strict";

const $ = (selector) => document.querySelector(selector);
const KEY = "ragtune.key";
const COLLECTION = "ragtune.collection";
const SHOW_EVAL = "ragtune.show-eval";
// `ragtune eval` indexes into collections named eval-<dataset>-<embedder>
// (ragtune.evaluate.retrieval.eval_collection); the picker hides them unless asked to show them.
const EVAL_PREFIX = "eval-";
const state = { key: sessionStorage.getItem(KEY) || "", auth: true, tab: null, collections: [] };

// ---- helpers -------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child ?? "");
  return node;
}

// Each tab (and the login form) has its own message area, hidden with it, so a message stays with
// the tab it is about; `#status` under the header holds only what belongs to no tab (a failed start)
// and is cleared when a tab opens. An action reports to the tab it was started from.
function statusArea(tab) {
  return (tab && document.querySelector(`#${tab} > .status`)) || $("#status");
}

function setStatus(text, isError = false, tab = state.tab) {
  const area = statusArea(tab);
  area.textContent = text;
  area.classList.toggle("error", isError);
}

function show(node, visible = true) { node.hidden = !visible; }

function collection() { return encodeURIComponent($("#collection").value); }

function fmt(n, digits = 3) { return typeof n === "number" ? n.toFixed(digits) : ""; }

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

// fetch with the key; JSON bodies in and out; a problem response becomes an ApiError.
async function request(path, { method = "GET", json, form, accept } = {}) {
  const headers = authHeaders(accept ? { Accept: accept } : {});
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    const problem = await response.json().catch(() => null);
    if (response.status === 401) showLogin(problem ? problem.detail : "");
    throw new ApiError(response.status, problem);
  }
  return response;
}

async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

// Run an action, reporting its failure in the message area of the tab it was started from.
async function guarded(action, tab = state.tab) {
  try {
    await action();
  } catch (error) {
    setStatus(error.message, true, tab);
  }
}

// ---- login and collections -----------------------------------------------------------------

function showLogin(message = "") {
  sessionStorage.removeItem(KEY);
  state.key = "";
  for (const node of ["#tabs", "#session", "#passage"]) show($(node), false);
  for (const tab of document.querySelectorAll(".tab")) show(tab, false);
  show($("#login"));
  state.tab = null;
  setStatus("", false, null);
  setStatus(message, Boolean(message), "login");
  $("#key").focus();
}

async function start() {
  const health = await (await fetch("/health")).json();
  state.auth = health.auth;
  if (state.auth && !state.key) return showLogin();
  try {
    await loadCollections();
  } catch (error) {
    if (error.status !== 401) setStatus(error.message, true);
    return;
  }
  show($("#login"), false);
  show($("#tabs"));
  show($("#session"));
  $("#who").textContent = state.auth ? `key ${state.key.split("_")[1] || ""}` : "auth off";
  show($("#logout"), state.auth);
  setStatus("", false, "login");
  openTab(location.hash.slice(1) || "ask");
}

async function loadCollections() {
  state.collections = await api("/collections");
  renderCollections();
}

function renderCollections() {
  const select = $("#collection");
  const wanted = select.value || sessionStorage.getItem(COLLECTION);
  const showEval = $("#show-eval").checked;
  const shown = state.collections.filter((c) => showEval || !c.name.startsWith(EVAL_PREFIX));
  select.replaceChildren(...shown.map((c) => el("option", { value: c.name, textContent: `${c.name} (${c.documents} docs)` })));
  if (shown.some((c) => c.name === wanted)) select.value = wanted;
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("#key").value.trim();
  sessionStorage.setItem(KEY, state.key);
  $("#key").value = "";
  await start();
});

$("#logout").addEventListener("click", () => showLogin());

$("#collection").addEventListener("change", () => {
  sessionStorage.setItem(COLLECTION, $("#collection").value);
  openTab(location.hash.slice(1) || "ask");
});

$("#show-eval").checked = sessionStorage.getItem(SHOW_EVAL) === "yes";
$("#show-eval").addEventListener("change", () => {
  sessionStorage.setItem(SHOW_EVAL, $("#show-eval").checked ? "yes" : "no");
  const before = $("#collection").value;
  renderCollections();
  if ($("#collection").value !== before) openTab(location.hash.slice(1) || "ask");  // the chosen one was hidden
});

// ---- tabs -------------------------------------------------------------------------------------

const onOpen = { documents: () => loadDocuments(), traces: () => loadTraces(), dashboard: () => loadDashboard(),
  models: () => loadModels() };

function openTab(name) {
  if (!document.getElementById(name)?.classList.contains("tab")) name = "ask";
  history.replaceState(null, "", `#${name}`);
  state.tab = name;
  setStatus("", false, null);
  for (const tab of document.querySelectorAll(".tab")) show(tab, tab.id === name);
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  show($("#passage"), false);
  if (onOpen[name]) {
    setStatus("", false, name);  // the tab's data is loaded afresh: an old message about it is stale
    guarded(onOpen[name], name);
  }
}

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => openTab(button.dataset.tab));
}

// ---- passages: a document's text with one span highlighted ------------------------------------

// The passage [start, end) marked; inside it, each quoted sentence found word for word in bold.
function highlight(passage, quotes) {
  const found = quotes.map((q) => [passage.indexOf(q), q.length]).filter(([at, n]) => at >= 0 && n > 0)
    .sort((a, b) => a[0] - b[0]);
  const mark = el("mark");
  let done = 0;
  for (const [at, n] of found) {
    if (at < done) continue;
    mark.append(passage.slice(done, at), el("strong", { textContent: passage.slice(at, at + n) }));
    done = at + n;
  }
  mark.append(passage.slice(done));
  return mark;
}

async function openPassage(documentId, start, end, label, quotes = []) {
  const doc = await api(`/collections/${collection()}/documents/${documentId}?text=true`);
  const text = doc.text || "";
  const mark = highlight(text.slice(start, end), quotes);
  $("#passage-title").textContent = `${label ? label + " " : ""}${doc.uri} · characters ${start}–${end}`;
  $("#passage-text").replaceChildren(text.slice(0, start), mark, text.slice(end));
  show($("#passage"));
  mark.scrollIntoView({ block: "center" });
}

$("#close-passage").addEventListener("click", () => show($("#passage"), false));

function passageButton(text, documentId, start, end, label, quotes = []) {
  const button = el("button", { type: "button", className: "link", textContent: text });
  button.addEventListener("click", () => guarded(() => openPassage(documentId, start, end, label, quotes)));
  return button;
}

// ---- ask: Server-Sent Events read from a fetch stream -----------------------------------------

async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// [1], [1, 2] or [1; 2], as the server's grounding reads them (ragtune.generate.grounding).
const CITATION = /\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]/g;

// The answer's text with each [n] made a button that opens the cited passage (the answer's
// sentences citing it emphasised where they quote it), above the list of the sources it cites.
// The model cites sources by their number in the prompt, and only some of them (say 1, 3 and 5):
// the cited ones are renumbered 1..n in order of first citation, in the text and in the list alike.
// A sentence that cited nothing but that one source supports (`inferred`) gets that source's
// marker too, set apart. Hovering a marker highlights its source; clicking one also opens it.
function renderAnswer(answer) {
  const cited = new Map(answer.citations.map((c) => [c.number, c]));
  const text = answer.answer;
  const markers = [...text.matchAll(CITATION)].map((m) => ({
    at: m.index, end: m.index + m[0].length, numbers: m[1].split(/[,;]/).map((n) => Number(n.trim())), inferred: false,
  }));
  let from = 0;
  for (const sentence of answer.sentences) {
    const at = text.indexOf(sentence.text, from);
    if (at < 0) continue;
    from = at + sentence.text.length;
    if (sentence.inferred && sentence.citations.length) markers.push({ at: from, end: from, numbers: sentence.citations, inferred: true });
  }
  markers.sort((a, b) => a.at - b.at);
  const shown = new Map();  // number in the prompt -> number shown
  for (const number of [...markers.flatMap((m) => m.numbers), ...cited.keys()]) {
    if (cited.has(number) && !shown.has(number)) shown.set(number, shown.size + 1);
  }
  const sources = new Map();  // number shown -> its list item

  const citeButton = (c, label) => {
    const quotes = answer.sentences.filter((s) => s.citations.includes(c.number))
      .map((s) => s.text.replace(CITATION, "").trim());
    const button = passageButton(label, c.document_id, c.start, c.end, `[${shown.get(c.number)}]`, quotes);
    button.classList.add("cite");
    return button;
  };
  const spotlight = (number, on) => sources.get(number)?.classList.toggle("spot", on);
  const marker = (number, inferred) => {
    const c = cited.get(number);
    if (!c) {
      return el("span", { className: "cite missing", textContent: "[?]",
        title: `the answer cites a source ${number}, which was not among its sources` });
    }
    const n = shown.get(number);
    const button = citeButton(c, `[${n}]`);
    button.dataset.source = n;
    if (inferred) {
      button.classList.add("inferred");
      button.title = `this sentence cited nothing; source ${n} supports it`;
    }
    button.addEventListener("mouseenter", () => spotlight(n, true));
    button.addEventListener("mouseleave", () => spotlight(n, false));
    button.addEventListener("click", () => {
      for (const li of sources.values()) li.classList.toggle("chosen", li === sources.get(n));
      sources.get(n).scrollIntoView({ block: "nearest" });
    });
    return button;
  };

  const parts = [];
  let last = 0;
  for (const m of markers) {
    parts.push(text.slice(last, m.at), m.inferred ? " " : "", ...m.numbers.map((n) => marker(n, m.inferred)));
    last = m.end;
  }
  parts.push(text.slice(last));
  $("#answer").replaceChildren(...parts);
  for (const c of answer.citations) {
    const n = shown.get(c.number);
    sources.set(n, el("li", { value: n, id: `source-${n}`, title: `source ${c.number} of the prompt` },
      citeButton(c, c.uri), ` ${c.text.slice(0, 160)}${c.text.length > 160 ? "…" : ""}`));
  }
  $("#citations").replaceChildren(...[...sources.entries()].sort((a, b) => a[0] - b[0]).map(([, li]) => li));
  const meta = [answer.model, answer.abstained ? "abstained" : answer.grounded ? "grounded" : "not fully grounded"];
  if (answer.error) meta.push(answer.error);
  const trace = answer.trace_id ? el("button", { type: "button", className: "link", textContent: `trace ${answer.trace_id}` }) : "";
  if (trace) trace.addEventListener("click", () => { openTab("traces"); guarded(() => showTrace(answer.trace_id)); });
  const thumbs = answer.trace_id ? feedbackButtons(answer.trace_id) : [];
  $("#answer-meta").replaceChildren(meta.join(" · "), " · ", trace, ...thumbs);
}

// Thumbs up or down on an answer: POST /feedback with its trace id; the buttons then say what was sent.
function feedbackButtons(traceId) {
  const buttons = [["up", "👍", "Good answer"], ["down", "👎", "Wrong or unhelpful answer"]].map(([thumbs, icon, title]) => {
    const button = el("button", { type: "button", className: "link thumbs", textContent: icon, title });
    button.dataset.thumbs = thumbs;
    button.addEventListener("click", () => guarded(async () => {
      await api("/feedback", { method: "POST", json: { response_id: traceId, thumbs } });
      for (const b of buttons) b.disabled = true;
      note.textContent = thumbs === "up" ? " thanks: marked good" : " thanks: marked wrong";
    }));
    return button;
  });
  const note = el("span", { className: "thumbs-note" });
  return [" · ", ...buttons, note];
}

$("#ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const body = { question: $("#question").value, top_k: Number($("#ask-top-k").value) || undefined, stream: true };
    if ($("#generator").value) body.generator = $("#generator").value;
    if ($("#max-tokens").value) body.max_tokens = Number($("#max-tokens").value);
    show($("#answer-box"));
    show($("#passage"), false);
    $("#answer").textContent = "";
    $("#answer").classList.add("streaming");
    $("#answer-meta").textContent = "";
    $("#citations").replaceChildren();
    setStatus("answering…", false, "ask");
    try {
      const response = await request(`/collections/${collection()}/ask`, { method: "POST", json: body, accept: "text/event-stream" });
      for await (const { event, data } of serverSentEvents(response)) {
        if (event === "token") $("#answer").append(data.text);
        else if (event === "answer") renderAnswer(data);
        else if (event === "error") throw new ApiError(data.status, data);
      }
      setStatus("", false, "ask");
    } finally {
      $("#answer").classList.remove("streaming");
    }
  });
});

// ---- search -----------------------------------------------------------------------------------

function parseFilters(text) {
  return text.split(/[,\n]/).map((f) => f.trim()).filter(Boolean);
}

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const body = { query: $("#query").value, top_k: Number($("#search-top-k").value) || 10 };
    if ($("#mode").value) body.mode = $("#mode").value;
    const filters = parseFilters($("#filters").value);
    if (filters.length) body.filters = filters;
    const result = await api(`/collections/${collection()}/search`, { method: "POST", json: body });
    $("#hits tbody").replaceChildren(...result.hits.map((h) => el("tr", {},
      el("td", { textContent: h.rank }),
      el("td", { textContent: fmt(h.score) }),
      el("td", { textContent: `${fmt(h.scores.dense)} / ${fmt(h.scores.bm25)}` }),
      el("td", { className: "path", title: h.uri }, passageButton(h.uri, h.document_id, h.start, h.end, `#${h.rank}`)),
      el("td", { className: "text", textContent: h.text }),
    )));
    show($("#hits"));
    setStatus(`${result.hits.length} hits (${result.mode}) in ${fmt(result.timings_ms.search, 1)} ms · trace ${result.trace_id}`,
      false, "search");
  });
});

// ---- documents --------------------------------------------------------------------------------

async function loadDocuments() {
  const prefix = $("#prefix").value;
  const docs = await api(`/collections/${collection()}/documents?limit=1000${prefix ? `&prefix=${encodeURIComponent(prefix)}` : ""}`);
  $("#docs tbody").replaceChildren(...docs.map((d) => {
    const remove = el("button", { type: "button", textContent: "Delete" });
    remove.addEventListener("click", () => guarded(async () => {
      if (!confirm(`Delete ${d.uri}?`)) return;
      await api(`/collections/${collection()}/documents/${d.id}`, { method: "DELETE" });
      setStatus(`deleted ${d.uri}`, false, "documents");
      await loadDocuments();
    }));
    const acl = d.acl.join(", ") || "everyone";
    const metadata = JSON.stringify(d.metadata);
    // one line per document: a long path (or ACL, or metadata) is cut short, whole on hover
    const row = el("tr", {},
      el("td", { className: "path", title: d.uri }, passageButton(d.uri, d.id, 0, 0, "")),
      el("td", { textContent: d.version }),
      el("td", { textContent: d.chunk_count }),
      el("td", { textContent: acl, title: acl }),
      el("td", { textContent: metadata, title: metadata }),
      el("td", { textContent: d.updated_at.slice(0, 19) }),
      el("td", {}, remove));
    row.dataset.uri = d.uri;
    return row;
  }));
}

$("#refresh-docs").addEventListener("click", () => guarded(loadDocuments));
$("#prefix").addEventListener("change", () => guarded(loadDocuments));

function describeJob(job) {
  const files = job.files.map((f) => {
    const errors = f.errors.map((e) => `${e.source}: ${e.reason}`).join("; ");
    return `${f.name}: ${f.status}${errors ? ` (${errors})` : ""}`;
  });
  const progress = job.status === "running" && job.progress ? ` · ${job.progress.chunks || 0} chunks so far` : "";
  return `ingest job ${job.id}: ${job.status}${job.error ? ` (${job.error})` : ""}${progress} · ${files.join(", ")}`;
}

$("#upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const form = new FormData();
    for (const file of $("#files").files) form.append("files", file, file.name);
    if ($("#acl").value.trim()) form.append("acl", $("#acl").value.trim());
    if ($("#metadata").value.trim()) form.append("metadata", $("#metadata").value.trim());
    let job = await api(`/collections/${collection()}/documents`, { method: "POST", form });
    $("#job").dataset.status = job.status;
    $("#job").textContent = describeJob(job);
    while (!["succeeded", "failed"].includes(job.status)) {  // long-poll until the job is done
      job = await api(`/ingest-jobs/${job.id}?wait=5`);
      $("#job").dataset.status = job.status;
      $("#job").textContent = describeJob(job);
    }
    $("#upload-form").reset();
    await Promise.all([loadDocuments(), loadCollections()]);
  });
});

// ---- traces -----------------------------------------------------------------------------------

async function loadTraces() {
  const query = new URLSearchParams({ limit: "50", collection: $("#collection").value });
  const [kind, outcome, feedback, slower] = ["#trace-kind", "#trace-outcome", "#trace-feedback", "#trace-slower"].map((id) => $(id).value);
  if (kind) query.set("kind", kind);
  if (outcome) query.set(...outcome.split("="));
  if (feedback) query.set("feedback", feedback);
  if (slower) query.set("slower_than_ms", slower);
  const traces = await api(`/traces?${query}`);
  $("#trace-list tbody").replaceChildren(...traces.map((t) => {
    const open = el("button", { type: "button", className: "link", textContent: t.id });
    open.addEventListener("click", () => guarded(() => showTrace(t.id)));
    const total = t.duration_ms ?? Object.values(t.timings_ms || {}).reduce((a, b) => Math.max(a, b), 0);
    return el("tr", {}, el("td", {}, open), el("td", { textContent: t.kind }),
      el("td", { textContent: t.created_at.slice(0, 19) }), el("td", { className: "text", textContent: t.query || "" }),
      el("td", { textContent: fmt(total, 1) }));
  }));
}

$("#refresh-traces").addEventListener("click", () => guarded(loadTraces));
for (const id of ["#trace-kind", "#trace-outcome", "#trace-feedback", "#trace-slower"]) {
  $(id).addEventListener("change", () => guarded(loadTraces));
}

async function showTrace(id) {
  renderTrace(await api(`/traces/${id}?chunks=true`));
}

// An answer's retrieval is a span of its trace: shown like a search's trace, with its own stages and scores.
function renderTrace(t) {
  $("#trace-title").textContent = `Trace ${t.id} · ${t.kind} · “${t.query || ""}” · ${t.created_at.slice(0, 19)}`;
  const search = t.kind === "ask" ? t.search : null;
  const searchLink = search ? el("button", { type: "button", className: "link", textContent: "its search" }) : "";
  if (searchLink) searchLink.addEventListener("click", () => renderTrace({ ...t, ...search, kind: "search", search: null, subtree: "retrieval" }));
  const feedback = (t.feedback || []).map((f) => ` · feedback: ${[f.thumbs === 1 ? "thumbs up" : f.thumbs === -1 ? "thumbs down" : "",
    f.score ?? "", f.label || "", f.comment || ""].filter((x) => x !== "").join(", ")}`);
  $("#trace-links").replaceChildren(t.error ? `error: ${t.error} · ` : "", `principal ${t.principal}`,
    t.params && t.params.model ? ` · model ${t.params.model}` : "", searchLink ? " · " : "", searchLink, ...feedback);
  const timings = Object.entries(t.timings_ms || {});
  const longest = Math.max(1, ...timings.map(([, ms]) => ms));
  $("#timings tbody").replaceChildren(...timings.map(([stage, ms]) => {
    const bar = el("span", { className: "bar" });
    bar.style.width = `${(100 * ms) / longest}%`;  // CSSOM: allowed by the page's style-src 'self'
    return el("tr", {}, el("th", { textContent: stage }), el("td", { textContent: fmt(ms, 1) }),
      el("td", { className: "bar-cell" }, bar));
  }));
  renderWaterfall(t.spans || [], t.subtree);
  const chunks = new Map((t.chunks || []).map((c) => [c.chunk_id, c]));
  $("#trace-results tbody").replaceChildren(...(t.results || []).map((r, i) => {
    const c = chunks.get(r.chunk_id);
    const label = r.number ?? r.rank ?? i + 1;
    const by = Object.entries(r.scores || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
    return el("tr", { className: r.cited ? "cited" : "" },
      el("td", { textContent: `${label}${r.cited ? " ✓" : ""}` }), el("td", { textContent: fmt(r.score) }),
      el("td", { textContent: by }),
      el("td", {}, c ? passageButton(`${c.uri} #${r.chunk_id}`, c.document_id, r.start ?? c.start, r.end ?? c.end, `[${label}]`)
        : `chunk ${r.chunk_id} (gone)`),
      el("td", { className: "text", textContent: c ? c.text : "" }));
  }));
  const prompt = (t.params && t.params.prompt) || [];
  show($("#prompt-box"), prompt.length > 0);
  $("#prompt").replaceChildren(...prompt.map((m) => el("div", { className: "message" },
    el("h4", { textContent: m.role }), el("pre", { textContent: m.content }))));
  $("#response").textContent = (t.params && t.params.response) || "";
  $("#trace-params").textContent = JSON.stringify({ ...t.params, prompt: undefined }, null, 2);
  show($("#trace"));
  $("#trace").scrollIntoView();
}

// The trace's spans as a waterfall: indented by depth, a bar from when each started to when it ended.
// With subtree (a span's name), only that span and what ran inside it.
function renderWaterfall(all, subtree) {
  const byId = new Map(all.map((s) => [s.span_id, s]));
  const top = subtree ? all.find((s) => s.name === subtree) : null;
  const within = (s) => { for (let p = s; p; p = byId.get(p.parent_id)) if (p === top) return true; return false; };
  const spans = top ? all.filter(within) : all;
  show($("#waterfall-box"), spans.length > 0);
  show($("#span-attributes"), false);
  if (!spans.length) return;
  const depth = (s) => { let d = 0; for (let p = byId.get(s.parent_id); p && p !== byId.get(top?.parent_id); p = byId.get(p.parent_id)) d += 1; return d; };
  // feedback comes seconds or days later: it is listed, at the right edge, not stretching the axis
  const timed = spans.filter((s) => s.name !== "feedback");
  const start = Math.min(...timed.map((s) => s.start_ms));
  const end = Math.max(...timed.map((s) => s.start_ms + s.duration_ms));
  const total = Math.max(end - start, 0.001);
  const ordered = [...spans].sort((a, b) => a.start_ms - b.start_ms || depth(a) - depth(b));
  $("#waterfall tbody").replaceChildren(...ordered.map((s) => {
    const bar = el("span", { className: "bar" });
    bar.style.left = `${Math.min((100 * (s.start_ms - start)) / total, 99.5)}%`;  // CSSOM: allowed by style-src 'self'
    bar.style.width = `${Math.max((100 * s.duration_ms) / total, 0.3)}%`;
    const name = el("td", { className: "name", textContent: `${"· ".repeat(depth(s))}${s.name}${s.status === "error" ? " ✗" : ""}` });
    const row = el("tr", { title: s.error || "" }, name, el("td", { textContent: fmt(s.duration_ms, 2) }),
      el("td", { className: "bar-cell" }, el("div", { className: "offset-bar" }, bar)));
    row.addEventListener("click", () => {
      for (const r of $("#waterfall tbody").children) r.classList.remove("selected");
      row.classList.add("selected");
      $("#span-attributes").textContent = JSON.stringify({ name: s.name, ...s.attributes, events: s.events }, null, 2);
      show($("#span-attributes"));
    });
    return row;
  }));
}

// ---- dashboard --------------------------------------------------------------------------------

const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7a8a", "#6e7781"];
// the SVG namespace, read off an inline <svg> (the page names no URL)
const SVG = $("#svg-namespace").namespaceURI;

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// One chart: lines over time (series: [{name, points: [[ms, value], ...]}]) across the window
// [from, to] (ms), the y axis from 0.
function lineChart(title, unit, series, [from, to]) {
  const box = el("div", { className: "chart" }, el("h3", { textContent: title }));
  box.dataset.title = title;
  const points = series.flatMap((s) => s.points);
  if (!points.length) {
    box.append(el("p", { className: "empty", textContent: "nothing in this window" }));
    return box;
  }
  const [w, h, left, bottom] = [600, 180, 52, 22];
  const t0 = Math.min(from, ...points.map((p) => p[0]));
  const t1 = Math.max(to, ...points.map((p) => p[0]), t0 + 1);
  const top = Math.max(...points.map((p) => p[1]), 1e-9);
  const x = (t) => left + ((w - left - 8) * (t - t0)) / (t1 - t0);
  const y = (v) => h - bottom - ((h - bottom - 8) * v) / top;
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": title });
  svg.append(svgEl("line", { x1: left, y1: h - bottom, x2: w - 8, y2: h - bottom, stroke: "#999" }),
    svgEl("line", { x1: left, y1: 8, x2: left, y2: h - bottom, stroke: "#999" }));
  for (const [v, label] of [[0, "0"], [top, `${number(top)}${unit}`]]) {
    const text = svgEl("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#555" });
    text.textContent = label;
    svg.append(text);
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const text = svgEl("text", { x: x(t), y: h - 6, "text-anchor": anchor, "font-size": 11, fill: "#555" });
    text.textContent = new Date(t).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    svg.append(text);
  }
  const legend = el("div", { className: "legend" });
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    svg.append(svgEl("polyline", { points: sorted.map(([t, v]) => `${x(t)},${y(v)}`).join(" "), fill: "none",
      stroke: color, "stroke-width": 2, "data-series": s.name }));
    for (const [t, v] of sorted) svg.append(svgEl("circle", { cx: x(t), cy: y(v), r: 2.5, fill: color }));
    const last = sorted[sorted.length - 1][1];
    const swatch = el("span", { className: "swatch" });
    swatch.style.background = color;  // CSSOM: allowed by style-src 'self'
    legend.append(el("span", {}, swatch, `${s.name}: ${number(last)}${unit} (latest)`));
  });
  box.append(svg, legend);
  return box;
}

function number(v) { return fmt(v, Number.isInteger(v) || v >= 10 ? 0 : 2); }

function byName(rows, key, value) {
  const out = new Map();
  for (const r of rows) {
    if (r[value] === null || r[value] === undefined) continue;
    if (!out.has(r[key])) out.set(r[key], []);
    out.get(r[key]).push([Date.parse(r.bucket), Number(r[value])]);
  }
  return [...out.entries()].map(([name, points]) => ({ name, points }));
}

async function loadDashboard() {
  const [hours, minutes] = $("#dash-window").value.split(":");
  const d = await api(`/traces/series?since_hours=${hours}&bucket_minutes=${minutes}&collection=${collection()}`);
  const asks = d.requests.filter((r) => r.kind === "ask");
  const rate = (field, of) => asks.filter((r) => of(r) > 0).map((r) => [Date.parse(r.bucket), (100 * r[field]) / of(r)]);
  const stages = d.stages.filter((r) => ["retrieval", "embed", "retrieve", "prompt", "support", "read", "generate", "grounding"].includes(r.stage));
  const tokens = new Map();
  for (const r of d.stages.filter((r) => r.stage === "generate")) {
    const t = Date.parse(r.bucket);
    tokens.set(t, [(tokens.get(t)?.[0] ?? 0) + Number(r.input_tokens || 0), (tokens.get(t)?.[1] ?? 0) + Number(r.output_tokens || 0)]);
  }
  const window = [Date.parse(d.since), Date.now()];
  $("#charts").replaceChildren(
    lineChart("Requests", "", byName(d.requests, "kind", "requests"), window),
    lineChart("Latency p50 by request kind", " ms", byName(d.requests, "kind", "p50_ms"), window),
    lineChart("Latency p50 by stage", " ms", byName(stages, "stage", "p50_ms"), window),
    lineChart("Answers: abstained and grounded", "%", [
      { name: "abstained", points: rate("abstained", (r) => r.requests) },
      { name: "grounded (of answered)", points: rate("grounded", (r) => r.requests - r.abstained) }], window),
    lineChart("Generation tokens", "", [
      { name: "in", points: [...tokens].map(([t, v]) => [t, v[0]]) },
      { name: "out", points: [...tokens].map(([t, v]) => [t, v[1]]) }], window),
    lineChart("Feedback", "", [
      { name: "negative", points: d.feedback.map((r) => [Date.parse(r.bucket), r.negative]) },
      { name: "positive", points: d.feedback.map((r) => [Date.parse(r.bucket), r.positive]) }], window));
}

$("#refresh-dashboard").addEventListener("click", () => guarded(loadDashboard));
$("#dash-window").addEventListener("change", () => guarded(loadDashboard));

// ---- models (read only) ---------------------------------------------------------------------

async function loadModels() {
  const models = await api("/models");
  show($("#models-empty"), models.length === 0);
  $("#model-list tbody").replaceChildren(...models.flatMap((m) => m.versions.map((v) => {
    const metrics = Object.entries(v.metrics).map(([k, x]) => `${k.slice(5)} ${fmt(x)}`).join(" · ");
    return el("tr", { className: v.aliases.includes("production") ? "production" : "" },
      el("td", { textContent: m.name }), el("td", { textContent: v.version }),
      el("td", { textContent: v.aliases.join(", ") }), el("td", { textContent: v.run_id || v.mlflow_run_id }),
      el("td", { textContent: v.servable ? "ok" : `${v.run_status} / ${v.trained}` }),
      el("td", { textContent: v.base }), el("td", { textContent: v.dataset }),
      el("td", { className: "text", textContent: metrics }),
      el("td", { textContent: v.created_at ? new Date(v.created_at).toISOString().slice(0, 19) : "" }));
  })));
}

$("#refresh-models").addEventListener("click", () => guarded(loadModels));

start().catch((error) => setStatus(error.message, true, null));
