// imgclf web page: classify images with the server's models. Everything user-controlled (class names,
// file names, messages) is inserted with textContent, never as HTML.
"use strict";

const state = { models: [], key: sessionStorage.getItem("imgclf-key") || "" };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function headers() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options || {}).headers } });
  if (response.status === 401) {
    $("key-box").hidden = false;
    throw new Error("this server needs an API key");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok && !(body && body.predictions)) {
    throw new Error((body && body.error) || "HTTP " + response.status);
  }
  return body;
}

function currentModel() {
  return state.models.find((m) => m.name === $("model-picker").value) || state.models[0];
}

function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => k + ": " + formatValue(v)).join(", ");
  }
  return String(value);
}

function showCard() {
  const model = currentModel();
  if (!model) return;
  $("card-title").textContent = model.name + " (" + model.file + ")";
  const fields = $("card-fields");
  fields.replaceChildren();
  const rows = [
    ["Classes", model.class_names.join(", ")],
    ["Architecture", model.architecture.name + ", " + model.parameters + " parameters"],
    ["Input", model.input.height + " × " + model.input.width + " RGB"],
    ["Test metrics", formatValue(model.metrics)],
    ["Trained", formatValue(model.created)],
    ["Data", formatValue(model.data)],
    ["Digest", model.digest],
  ];
  for (const [name, value] of rows) {
    fields.append(el("dt", "", name), el("dd", "", value));
  }
}

async function loadModels() {
  try {
    const body = await api("/v1/models");
    state.models = body.models;
    const picker = $("model-picker");
    picker.replaceChildren(...state.models.map((m) => {
      const option = el("option", "", m.name);
      option.value = m.name;
      return option;
    }));
    $("picker").hidden = state.models.length < 2;
    showCard();
    setStatus("Ready: choose, drop or paste images.");
  } catch (err) {
    setStatus(err.message, true);
  }
}

function resultTile(file, row, classNames) {
  const tile = el("article", "result");
  const img = el("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  tile.append(img, el("div", "file", file.name));
  if (row.error) {
    tile.append(el("div", "error", row.error));
    return tile;
  }
  tile.append(el("div", "label", row.label));
  tile.append(el("div", "confidence", (row.confidence * 100).toFixed(1) + "%"));
  if (row.unlike_training_data) {
    tile.append(el("div", "unlike", "Unlike the training data: this label is a guess"));
  }
  for (const name of classNames) {
    const p = row.probabilities[name];
    const bar = el("div", "bar");
    const meter = el("progress");
    meter.max = 1;
    meter.value = p;
    bar.append(el("span", "", name), meter, el("span", "", (p * 100).toFixed(1) + "%"));
    tile.append(bar);
  }
  return tile;
}

async function classify(files) {
  const images = Array.from(files).filter((f) => f.size > 0);
  const model = currentModel();
  if (!images.length || !model) return;
  setStatus("Classifying " + images.length + " image(s)…");
  const results = $("results");
  const chunk = 16;
  try {
    for (let start = 0; start < images.length; start += chunk) {
      const part = images.slice(start, start + chunk);
      const form = new FormData();
      for (const file of part) form.append("files", file, file.name || "pasted.png");
      const body = await api("/v1/models/" + encodeURIComponent(model.name) + "/predict", {
        method: "POST",
        body: form,
      });
      const tiles = document.createDocumentFragment();
      part.forEach((file, i) => tiles.append(resultTile(file, body.predictions[i], model.class_names)));
      results.append(tiles);
    }
    setStatus("Done: " + images.length + " image(s) classified with " + model.name + ".");
  } catch (err) {
    setStatus(err.message, true);
  }
}

function wire() {
  $("files").addEventListener("change", (event) => {
    classify(event.target.files);
    event.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData.items)
      .filter((item) => item.kind === "file")
      .map((item) => item.getAsFile());
    classify(files);
  });
  $("model-picker").addEventListener("change", showCard);
  $("key-box").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("imgclf-key", state.key);
    $("key-box").hidden = true;
    loadModels();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  loadModels();
});
