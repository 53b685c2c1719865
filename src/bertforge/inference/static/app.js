// bertforge web demo: plain JavaScript, no build step. Asks /v1/info what the model can do, shows a
// panel per task, posts to /v1/<task> and renders the result. All text goes in through textContent,
// never innerHTML, so model output and user text cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  $("error").textContent = message || "";
}

async function call(task, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(`/v1/${task}`, { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = data.message || (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return data.results[0];
}

// One row: name, a bar as long as the score, the score.
function scoreRow(name, score) {
  const row = el("div", "row");
  row.append(el("span", "name", name));
  const bar = el("div", "bar");
  bar.style.width = `${Math.max(1, Math.round(score * 240))}px`;
  row.append(bar, el("span", "score", score.toFixed(3)));
  return row;
}

// Text with [start, end) spans wrapped in <mark>; spans are character offsets into text.
function markSpans(text, spans, className) {
  const box = el("div", "marked");
  let at = 0;
  for (const span of [...spans].sort((a, b) => a.start - b.start)) {
    if (span.start < at) continue; // overlapping spans: keep the first
    box.append(document.createTextNode(text.slice(at, span.start)));
    const mark = el("mark", className);
    mark.append(el("span", "span-text", text.slice(span.start, span.end)));
    if (span.label) mark.append(el("span", "tag", span.label));
    mark.title = span.title || "";
    box.append(mark);
    at = span.end;
  }
  box.append(document.createTextNode(text.slice(at)));
  return box;
}

const render = {
  "fill-mask"(result, output) {
    // One list of candidates per mask token (a single-mask text may come as one flat list).
    const perMask = Array.isArray(result[0]) ? result : [result];
    perMask.forEach((candidates, i) => {
      if (perMask.length > 1) output.append(el("div", "muted", `mask ${i + 1}`));
      const list = el("ol", "candidates");
      for (const c of candidates) {
        const item = el("li", "candidate");
        item.append(scoreRow(c.token_str, c.score));
        list.append(item);
      }
      output.append(list);
    });
  },
  classify(result, output) {
    for (const r of result) output.append(scoreRow(r.label, r.score));
  },
  ner(result, output, text) {
    if (!result.length) output.append(el("div", "muted", "no entities found"));
    const spans = result.map((e) => ({ start: e.start, end: e.end, label: e.entity_group || e.entity || e.label,
      title: `score ${(e.score ?? 1).toFixed(3)}` }));
    output.append(markSpans(text, spans, "entity"));
  },
  qa(result, output, text) {
    const answers = Array.isArray(result) ? result : [result];
    const best = answers[0];
    if (!best || !best.answer) {
      output.append(el("div", "muted", "no answer found in the context"));
      return;
    }
    output.append(el("div", "answer-text", `${best.answer}  (score ${best.score.toFixed(3)})`));
    output.append(markSpans(text, [{ start: best.start, end: best.end, title: `score ${best.score.toFixed(3)}` }], "answer"));
  },
  embed(result, output) {
    const vector = Array.isArray(result) ? result : result.embedding;
    const norm = Math.sqrt(vector.reduce((s, x) => s + x * x, 0));
    output.append(el("div", "embedding", `${vector.length} dimensions, norm ${norm.toFixed(3)}`));
    output.append(el("div", "muted", `[${vector.slice(0, 8).map((x) => x.toFixed(3)).join(", ")}, …]`));
  },
};

async function run(task) {
  const output = $(`${task}-output`);
  const text = $(`${task}-input`).value;
  let inputs = text;
  if (task === "qa") inputs = { question: $("qa-question").value, context: text };
  if (task === "classify" && info.classify_pairs) inputs = { text, text_pair: $("classify-pair").value };
  const body = { inputs };
  const button = $(`${task}-run`);
  button.disabled = true;
  output.replaceChildren(el("span", "muted", "…"));
  showError("");
  try {
    const result = await call(task, body);
    output.replaceChildren();
    render[task](result, output, text);
    output.dataset.done = "1";
  } catch (error) {
    output.replaceChildren();
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

async function start() {
  try {
    const response = await fetch("/v1/info");
    info = await response.json();
  } catch (error) {
    showError(`cannot reach the server: ${error.message}`);
    return;
  }
  $("model").textContent = `${info.model} · ${info.tasks.join(", ") || "no tasks"}`;
  $("auth").hidden = !info.api_key_required;
  if (info.mask_token) $("fill-mask-input").value = `The capital of France is ${info.mask_token}.`;
  if (info.classify_pairs) {
    $("classify-pair").hidden = false;
    $("classify-input").value = "A man is sleeping on the sofa.";
    $("classify-pair").value = "Nobody is asleep.";
  }
  for (const task of info.tasks) {
    $(task).hidden = false;
    $(`${task}-run`).addEventListener("click", () => run(task));
  }
  document.body.dataset.ready = "1";
}

start();
