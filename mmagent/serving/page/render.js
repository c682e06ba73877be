// Rendering the answer: the decision (action, reply, escalation, unknown score, prediction set, probabilities, contributions,
// transcript) and the explanation (/v1/explain: heatmap, word scores, audio over time, ...).
// Every value from the server goes in as text (textContent), never as HTML.
import { el } from "./form.js";

const pct = (p) => `${(100 * p).toFixed(1)} %`;

function row(list, term, value, id) {
  list.append(el("dt", { text: term }), el("dd", { id, text: value }));
}

// Horizontal bars; `signed` colours negative values differently (scores scaled by max |v|).
export function bars(container, entries, { format = pct, scale = null, signed = false, cls = "" } = {}) {
  const top = scale ?? Math.max(1e-12, ...entries.map(([, v]) => Math.abs(v)));
  container.replaceChildren(
    ...entries.map(([name, value]) => {
      const fill = el("div", { class: `fill${signed && value < 0 ? " negative" : ""}` });
      fill.style.width = `${Math.min(100, (100 * Math.abs(value)) / top)}%`;
      return el("div", { class: `bar ${cls}`, "data-name": name, "data-value": String(value) },
        el("span", { class: "bar-name", text: name }), el("div", { class: "track" }, fill), el("span", { class: "bar-value", text: format(value) }));
    }),
  );
}

export function renderDecision(d) {
  const list = document.getElementById("decision");
  list.replaceChildren();
  row(list, "action", d.action, "action");
  if (d.label !== null && d.label !== undefined) row(list, `${d.target}`, `${d.label}${d.confidence != null ? ` (${pct(d.confidence)})` : ""}`, "label");
  if (d.labels && d.labels.length) row(list, `${d.target} (labels)`, d.labels.join(", "), "labels");
  if (d.value !== null && d.value !== undefined) row(list, d.target, String(d.value), "value");
  if (d.reply) row(list, "reply", d.reply, "reply");
  row(list, "escalated", d.escalated ? `yes: ${d.action.replace(/_/g, " ")}` : "no", "escalated");
  if (d.reason) row(list, "reason", d.reason, "reason");
  if (d.unknown_score !== null && d.unknown_score !== undefined)
    row(list, "unknown input", `${d.unknown ? "yes" : "no"} (score ${d.unknown_score.toPrecision(3)})`, "unknown");
  if (Array.isArray(d.prediction_set)) row(list, "prediction set", d.prediction_set.length ? d.prediction_set.join(", ") : "(empty)", "prediction-set");
  if (d.transcript) row(list, "heard", d.transcript, "transcript");
  const probs = Object.entries(d.probabilities || {}).sort((a, b) => b[1] - a[1]);
  bars(document.getElementById("probabilities"), probs, { scale: 1, cls: "probability" });
  showContributions(d.contributions || {});
}

export function showContributions(contributions) {
  const entries = Object.entries(contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const box = document.getElementById("contributions");
  if (!entries.length) box.replaceChildren(el("p", { class: "hint", text: "no contributions reported" }));
  else bars(box, entries, { format: (v) => v.toFixed(3), signed: true, cls: "contribution" });
}

const shade = (score) => {
  const a = Math.min(1, Math.abs(score)).toFixed(2);
  return score >= 0 ? `rgba(214, 69, 40, ${a})` : `rgba(40, 110, 214, ${a})`;
};

// The text with each scored token highlighted (offsets are into the text that was explained).
function words(part, text) {
  const box = el("p", { class: "tokens" });
  const tokens = [...(part.tokens || [])].sort((a, b) => a.start - b.start);
  const fits = text && tokens.every((t) => Number.isInteger(t.start) && t.end <= text.length && t.start <= t.end);
  let at = 0;
  for (const t of tokens) {
    const span = el("mark", { class: "token", title: `score ${t.score.toFixed(3)}`, "data-score": String(t.score), text: fits ? text.slice(t.start, t.end) : t.token });
    span.style.backgroundColor = shade(t.score);
    if (fits && t.start < at) continue; // overlapping sub-word pieces: the first one is shown
    if (fits && t.start > at) box.append(text.slice(at, t.start));
    else if (!fits && at) box.append(" ");
    box.append(span);
    at = fits ? t.end : at + 1;
  }
  if (fits && at < text.length) box.append(text.slice(at));
  return box;
}

function overTime(part) {
  const strip = el("div", { class: "timeline" });
  for (const [i, s] of (part.scores || []).entries()) {
    const cell = el("div", { class: "slice", title: `${(i * part.window_seconds).toFixed(1)} s: ${s.toFixed(2)}` });
    cell.style.height = `${Math.max(2, 100 * s)}%`;
    strip.append(cell);
  }
  const seconds = (part.scores || []).length * (part.window_seconds || 0);
  return el("div", { class: "audio-importance" }, strip, el("p", { class: "hint", text: `importance over time, 0 to ${seconds.toFixed(1)} s (${part.window_seconds} s windows)` }));
}

export function renderExplanation(ex, texts, transcript) {
  const box = document.getElementById("explanations");
  box.replaceChildren();
  if (ex.contributions && Object.keys(ex.contributions).length) showContributions(ex.contributions);
  const parts = Object.entries(ex.inputs || {});
  if (ex.explained_label) box.append(el("p", { class: "hint", text: `why ${ex.target} = ${ex.explained_label}:` }));
  for (const [name, part] of parts) {
    const section = el("section", { class: `explained ${part.modality}`, "data-input": name }, el("h4", { text: `${name} (${part.method})` }));
    if (part.modality === "text") section.append(words(part, texts[name] ?? transcript ?? ""));
    else if (part.modality === "image" && /^data:image\/png;base64,/.test(part.overlay_png || "")) {
      section.append(el("img", { class: "heatmap", alt: `heatmap over ${name}`, src: part.overlay_png }));
    } else if (part.modality === "audio") {
      section.append(overTime(part));
      if (part.transcript) section.append(el("p", { class: "transcript", text: `heard: ${part.transcript}` }));
    } else if (part.modality === "numeric") {
      const b = el("div", { class: "bars" });
      bars(b, (part.features || []).map((f) => [f.name, f.score]), { format: (v) => v.toFixed(3), signed: true });
      section.append(b);
    } else if (part.modality === "categorical") section.append(el("p", { text: `score ${Number(part.score).toFixed(3)}` }));
    box.append(section);
  }
}
