// The form, built from /v1/schema: one control per input column, by modality.
import { Recorder } from "./wav.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

const HINTS = {
  text: "free text",
  image: "an image file",
  audio: "an audio file, or record from the microphone",
  numeric: "numbers",
  categorical: "a category (as in the training table)",
};

export class RecordForm {
  constructor(container, schema) {
    this.container = container;
    this.schema = schema;
    this.recordings = new Map(); // audio column -> recorded WAV Blob
    this.previews = [];
    container.replaceChildren(...schema.inputs.map((input) => this.fieldset(input)));
  }

  fieldset(input) {
    const legend = el("legend", {}, el("span", { class: "input-name", text: input.name }), el("span", { class: "modality", text: ` ${input.modality}` }));
    if (input.required) legend.append(el("span", { class: "required", text: " required" }));
    const box = el("fieldset", { class: `input ${input.modality}`, "data-input": input.name }, legend, el("p", { class: "hint", text: HINTS[input.modality] || "" }));
    for (const column of input.columns) box.append(this.control(input, column));
    return box;
  }

  control(input, column) {
    const id = `field-${column}`.replace(/[^\w-]/g, "_");
    const wrap = el("div", { class: "field", "data-field": column });
    // One column named like its input: the legend already names it (the label stays for screen readers).
    const alone = input.columns.length === 1 && column === input.name;
    const label = el("label", { for: id, class: alone ? "sr-only" : "", text: column });
    let control;
    if (input.modality === "text") control = el("textarea", { id, name: column, rows: 3 });
    else if (input.modality === "numeric") control = el("input", { id, name: column, type: "number", step: "any", inputmode: "decimal" });
    else if (input.modality === "categorical") control = el("input", { id, name: column, type: "text", autocomplete: "off" });
    else control = el("input", { id, name: column, type: "file", accept: `${input.modality}/*` });
    wrap.append(label, control);
    if (input.modality === "image") this.imagePreview(wrap, control);
    if (input.modality === "audio") this.audioControls(wrap, control, column);
    wrap.append(el("p", { class: "field-error", role: "alert" }));
    return wrap;
  }

  imagePreview(wrap, control) {
    const img = el("img", { class: "preview", alt: "preview of the chosen image", hidden: true });
    control.addEventListener("change", () => {
      const file = control.files[0];
      img.hidden = !file;
      if (file) img.src = this.url(file);
    });
    wrap.append(img);
  }

  audioControls(wrap, control, column) {
    const player = el("audio", { class: "preview", controls: true, hidden: true });
    const record = el("button", { type: "button", class: "record", text: "● Record" });
    const note = el("span", { class: "record-status" });
    const show = (blob, text) => {
      player.hidden = !blob;
      if (blob) player.src = this.url(blob);
      note.textContent = text;
    };
    control.addEventListener("change", () => {
      this.recordings.delete(column); // an uploaded file replaces a recording
      show(control.files[0], control.files[0] ? "" : "");
    });
    if (!Recorder.available()) {
      record.disabled = true;
      note.textContent = "recording needs a secure page (https or localhost) and a browser with MediaRecorder";
    }
    let recorder = null;
    const stop = async () => {
      const active = recorder;
      recorder = null;
      record.textContent = "● Record";
      try {
        const wav = await active.stop();
        this.recordings.set(column, wav);
        control.value = ""; // a recording replaces an uploaded file
        show(wav, `recorded ${(wav.size / 32000).toFixed(1)} s (16-bit WAV, 16 kHz)`);
      } catch (e) {
        show(null, `recording failed: ${e.message}`);
      }
    };
    record.addEventListener("click", async () => {
      if (recorder) return stop();
      recorder = new Recorder();
      try {
        await recorder.start(this.schema.limits.max_audio_seconds || 30, stop);
        record.textContent = "■ Stop";
        note.textContent = "recording…";
      } catch (e) {
        recorder = null;
        note.textContent = `cannot record: ${e.message}`;
      }
    });
    wrap.append(el("div", { class: "recorder" }, record, note), player);
  }

  url(blob) {
    const url = URL.createObjectURL(blob);
    this.previews.push(url);
    return url;
  }

  reset() {
    this.recordings.clear();
    this.previews.forEach((u) => URL.revokeObjectURL(u));
    this.previews = [];
    this.container.querySelectorAll(".preview").forEach((p) => { p.hidden = true; p.removeAttribute("src"); });
    this.container.querySelectorAll(".record-status").forEach((p) => { p.textContent = ""; });
    this.clearErrors();
  }

  // The record as multipart form data (empty fields are left out: a missing input), and the
  // text values sent (to place the word scores of the explanation).
  collect() {
    const data = new FormData();
    const texts = {};
    for (const input of this.schema.inputs) {
      for (const column of input.columns) {
        const control = this.container.querySelector(`[data-field="${CSS.escape(column)}"] [name]`);
        if (input.modality === "image" || input.modality === "audio") {
          const recorded = this.recordings.get(column);
          if (recorded) data.append(column, recorded, "recording.wav");
          else if (control.files[0]) data.append(column, control.files[0], control.files[0].name);
        } else if (control.value.trim() !== "") {
          data.append(column, control.value);
          if (input.modality === "text") texts[input.name] = control.value;
        }
      }
    }
    return { data, texts, empty: [...data.keys()].length === 0 };
  }

  clearErrors() {
    this.container.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
    this.container.querySelectorAll("[aria-invalid]").forEach((c) => c.removeAttribute("aria-invalid"));
  }

  // Put the API's message next to the field it names; false when it names none of the form's.
  showFieldError(field, message) {
    let shown = false;
    for (const name of String(field || "").split(",").map((f) => f.trim()).filter(Boolean)) {
      const wrap = this.container.querySelector(`[data-field="${CSS.escape(name)}"]`);
      if (!wrap) continue;
      wrap.querySelector(".field-error").textContent = message;
      wrap.querySelector("[name]").setAttribute("aria-invalid", "true");
      shown = true;
    }
    return shown;
  }
}
