// The page's flow: read /v1/schema (asking for the API key when the server wants one), build the
// form, then on submit: /v1/act (the decision, shown at once) and /v1/explain (shown when ready;
// a server without it still shows the decision).
import { ApiError, call, forgetKey, saveKey, storedKey, validKey } from "./api.js";
import { RecordForm } from "./form.js";
import { renderDecision, renderExplanation } from "./render.js";

const $ = (id) => document.getElementById(id);
let form = null;

function status(text) {
  $("status").textContent = text;
  $("status").hidden = !text;
}

function askForKey(message) {
  $("main").hidden = true;
  $("key-panel").hidden = false;
  $("key-message").textContent = message;
  $("forget-key").hidden = true;
  status("");
  $("api-key").focus();
}

// A 401 means the key is missing or wrong: drop it and ask again.
function keyRefused(error) {
  const had = storedKey();
  forgetKey();
  askForKey(had ? `API key refused: ${error.message}. Enter a valid key.` : "This server needs an API key.");
}

async function start() {
  let schema;
  try {
    schema = await call("v1/schema");
  } catch (e) {
    if (e.status === 401) return keyRefused(e);
    if (e.status === 503) {
      status("The model is loading…");
      return setTimeout(start, 1000);
    }
    return status(`Cannot read the agent's schema: ${e.message}`);
  }
  $("key-panel").hidden = true;
  $("forget-key").hidden = !storedKey();
  const targets = schema.targets.map((t) => `${t.name} (${t.type}${t.labels.length ? `: ${t.labels.length} labels` : ""})`).join(", ");
  $("about").textContent = `predicts ${targets}${schema.policy ? ` · policy: ${schema.policy}` : ""}`;
  form = new RecordForm($("fields"), schema);
  $("main").hidden = false;
  status("");
}

function showError(e) {
  const box = $("form-error");
  const placed = form.showFieldError(e.field, e.message);
  box.textContent = `${e.status ? `Error ${e.status}` : "Error"}: ${e.message}${e.field && !placed ? ` (field: ${e.field})` : ""}`;
  box.hidden = false;
}

async function submit(event) {
  event.preventDefault();
  form.clearErrors();
  $("form-error").hidden = true;
  const { data, texts, empty } = form.collect();
  if (empty) return showError(new ApiError(0, { error: "fill in at least one input" }));
  $("submit").disabled = true;
  status("Asking the agent…");
  try {
    const { decisions } = await call("v1/act", { method: "POST", body: data });
    const decision = decisions[0];
    renderDecision(decision);
    $("explanations").replaceChildren();
    $("answer").hidden = false;
    $("explain-status").textContent = "explaining…";
    status("");
    await explain(data, texts, decision.transcript);
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.status === 401) return keyRefused(e);
    status("");
    showError(e);
  } finally {
    $("submit").disabled = false;
  }
}

async function explain(data, texts, transcript) {
  try {
    const explanation = await call("v1/explain", { method: "POST", body: data });
    renderExplanation(explanation, texts, explanation.decision?.transcript ?? transcript);
    $("explain-status").textContent = "";
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.status === 401) return keyRefused(e);
    $("explain-status").textContent = e.status === 404 || e.status === 405
      ? "This server does not explain decisions (no /v1/explain): the decision above is all there is."
      : `No explanation: ${e.message}`;
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!validKey(key)) {
    $("key-message").textContent = "API key refused: a key is printable ASCII without spaces.";
    return;
  }
  saveKey(key);
  $("api-key").value = "";
  $("key-message").textContent = "";
  status("Checking the key…");
  start();
});
$("forget-key").addEventListener("click", () => {
  forgetKey();
  location.reload();
});
$("record-form").addEventListener("submit", submit);
$("record-form").addEventListener("reset", () => {
  form.reset();
  $("form-error").hidden = true;
});
start();
