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

const SPLITS = [["testing", "Testing"], ["validation", "Validation"], ["training", "Training"]];
const METRIC_NAMES = { accuracy: "accuracy", loss: "loss", lr: "learning rate", macro_f1: "macro F1" };
const LAYOUTS = { splits: "split folders", flat: "one folder per class, split by seed" };
const SOFTWARE = ["imgclf", "torch", "onnxruntime", "numpy", "pillow", "python", "platform"];

function splitImages(model, split) {
  const counts = model.data && model.data.counts && model.data.counts[split];
  if (!counts) return null;
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

// One row per split the metrics were measured on, each labelled: testing is the held-out score, the
// others are the saved epoch's (training's are averaged over that epoch, with augmentation).
function metricRows(model) {
  const bySplit = model.metrics_by_split || {};
  const rows = [];
  for (const [split, title] of SPLITS) {
    const values = bySplit[split];
    if (!values) continue;
    const parts = Object.entries(values)
      .filter(([key]) => key !== "epoch")
      .map(([key, value]) => (METRIC_NAMES[key] || key.replace(/_/g, " ")) + " " + formatValue(value));
    const about = [];
    if (split === "testing") about.push("held out");
    const n = splitImages(model, split);
    if (n !== null) about.push(n + " images");
    if (split !== "testing" && model.epoch !== null && model.epoch !== undefined) {
      about.push("epoch " + model.epoch + (split === "training" ? ", averaged over it" : ""));
    }
    rows.push([title + " metrics" + (about.length ? " (" + about.join(", ") + ")" : ""), parts.join(", ")]);
  }
  if (!rows.length) rows.push(["Metrics", "none recorded in the file"]);
  return rows;
}

function formatCreated(model) {
  if (!model.created) return "—";
  const when = new Date(model.created);
  const text = isNaN(when) ? String(model.created) : when.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  return model.epoch !== null && model.epoch !== undefined ? text + ", weights of epoch " + model.epoch : text;
}

function formatData(model) {
  const data = model.data;
  if (!data) return "—";
  const counts = SPLITS.slice().reverse()
    .map(([split]) => [split, splitImages(model, split)])
    .filter(([, n]) => n)
    .map(([split, n]) => n + " " + split);
  const parts = [];
  if (data.layout) parts.push(LAYOUTS[data.layout] || String(data.layout));
  if (counts.length) parts.push(counts.join(", ") + " images");
  if (data.skipped) parts.push(data.skipped + " unreadable image(s) skipped");
  if (data.fingerprint) parts.push("fingerprint " + String(data.fingerprint).slice(0, 12) + "…");
  return parts.join("; ") || "—";
}

function formatSoftware(model) {
  const versions = model.versions || {};
  const names = SOFTWARE.filter((k) => versions[k]).concat(Object.keys(versions).filter((k) => !SOFTWARE.includes(k)));
  return names.map((k) => (k === "platform" ? String(versions[k]) : k + " " + versions[k])).join(" · ") || "—";
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
    ...metricRows(model),
    ["Saved", formatCreated(model)],
    ["Data", formatData(model)],
    ["Software", formatSoftware(model)],
    ["Digest", String(model.digest).slice(0, 16) + "…"],
  ];
  for (const [name, value] of rows) {
    const dd = el("dd", "", value);
    if (name === "Digest") dd.title = model.digest;
    fields.append(el("dt", "", name), dd);
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
  let classified = 0;
  let failed = 0;
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
      part.forEach((file, i) => {
        const row = body.predictions[i];
        if (row.error) failed += 1; else classified += 1;
        tiles.append(resultTile(file, row, model.class_names));
      });
      results.append(tiles);
    }
    if (failed) {
      setStatus("Done: " + classified + " of " + images.length + " image(s) classified with " + model.name +
        "; " + failed + " failed (their errors are shown below).", true);
    } else {
      setStatus("Done: " + classified + " image(s) classified with " + model.name + ".");
    }
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
