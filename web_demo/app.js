// The page: load the site's model, classify a photo on the device, benchmark, self-check.
//
// Everything runs in this tab: the photo is decoded, preprocessed (preprocess.js, the
// manifest's spec) and classified (runtime.js) without leaving the device. Any failure
// becomes a message with what went wrong and what to do next, never a blank screen.
// window.dermmobile exposes the same actions to the Chromium tests (web_demo/test/).

import { decodeImage, isJpeg } from "./decode.js";
import { PageError, checkManifest, checkSite, sha256Hex } from "./manifest.js";
import { preprocessPixels, reducedDecodeFactor } from "./preprocess.js";
import { openRuntime, quantize } from "./runtime.js";
import { softmax, topK } from "./stats.js";
import { benchRow, rowsFile, timeRuns } from "./bench.js";

const TOP_K = 3;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const state = { site: null, manifest: null, runtime: null, golden: null, loadMs: 0, firstMs: 0, lastRow: null };

// -- small helpers ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const label = (name) => name.replaceAll("_", " ");
const ms = (value) => `${value < 10 ? value.toFixed(2) : value.toFixed(1)} ms`;

export function showError(error) {
  const known = error instanceof PageError;
  const box = $("error");
  box.replaceChildren(
    el("h2", {}, known ? error.title : "Something went wrong"),
    el("p", {}, known ? error.detail : String(error && error.message ? error.message : error)),
    el("p", { class: "hint" }, known ? error.hint : "Reload the page; if it happens again, rebuild the site with `dermmobile web`."),
  );
  box.hidden = false;
  box.focus?.();
  document.body.dataset.state = document.body.dataset.state === "ready" ? "ready" : "error";
  console.error(error);
}

function setStatus(text) {
  $("status").textContent = text;
}

async function fetchBytes(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (error) {
    throw new PageError(`${what} could not be fetched`, `${url}: ${error.message}`, "Is the server still running? Reload the page.");
  }
  if (!response.ok) {
    throw new PageError(`${what} is missing`, `${url}: HTTP ${response.status}`, "Rebuild the site with `dermmobile web`.");
  }
  return new Uint8Array(await response.arrayBuffer());
}

async function fetchJson(url, what) {
  const bytes = await fetchBytes(url, what);
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new PageError(`${what} is damaged`, `${url} is not valid JSON (${error.message})`,
      "Rebuild the site with `dermmobile web`.");
  }
}

function preprocess(pixels, width, height, channels) {
  const { manifest } = state;
  return preprocessPixels(pixels, width, height, channels, manifest.preprocess, manifest.layout);
}

// -- loading ----------------------------------------------------------------------------------

async function load() {
  setStatus("Loading the model…");
  const site = checkSite(await fetchJson("site.json", "The site index"));
  const manifest = checkManifest(await fetchJson(site.manifest, "The model's manifest"), site.manifest);
  if (site.model !== `model/${manifest.file}`) {
    throw new PageError("The site and the manifest disagree", `site.json names ${site.model}, the manifest ${manifest.file}`,
      "Rebuild the site with `dermmobile web`.");
  }
  state.site = site;
  state.manifest = manifest;
  const crop = manifest.preprocess.crop;
  let grey;
  try {
    // A mid-grey image now: an unknown or old preprocessing spec is refused at load, not at the first photo.
    grey = preprocess(new Uint8Array(crop * crop * 3).fill(128), crop, crop, 3);
  } catch (error) {
    throw new PageError("This model's preprocessing is not supported here", error.message,
      "Re-export the model with the current dermmobile (preprocessing spec v2) and rebuild the site.");
  }
  const started = performance.now();
  const bytes = await fetchBytes(site.model, "The model file");
  const digest = await sha256Hex(bytes);
  if (digest !== manifest.sha256) {
    throw new PageError("The model file does not match its manifest",
      `sha256 ${digest.slice(0, 16)}… but the manifest says ${manifest.sha256.slice(0, 16)}…`,
      "The file was changed or damaged after export: re-export it and rebuild the site with `dermmobile web`.");
  }
  const runtime = await openRuntime(site, manifest, bytes, Number(params.get("threads")) || undefined);
  state.loadMs = performance.now() - started;
  const first = performance.now();
  await runtime.run(grey);
  state.firstMs = performance.now() - first;
  state.runtime = runtime;
  if (site.golden) state.golden = await fetchJson(site.golden, "The golden samples' index");
  renderReady();
}

function renderReady() {
  const { manifest, runtime, site } = state;
  const quant = manifest.quantization === "none" ? "fp32" : manifest.quantization;
  setStatus(`Ready · ${manifest.arch} · ${manifest.format} ${quant} · ${runtime.name} ${runtime.version} · ` +
    `${runtime.threads} thread${runtime.threads > 1 ? "s" : ""}`);
  $("photo-input").disabled = false;
  $("bench-run").disabled = false;
  $("check-run").disabled = !state.golden;
  $("check-note").textContent = state.golden
    ? `${state.golden.samples.length} golden images bundled by \`dermmobile web --images\`.`
    : "No golden images in this build (add them with `dermmobile web --images`).";
  const twin = site.uint8_io_twin
    ? " The int8 model runs as its uint8-I/O twin (LiteRT.js takes no int8 tensors): the same int8 body, checked at build time to give identical logits."
    : "";
  $("about-model").textContent =
    `${manifest.arch}, ${manifest.labels.length} classes, ${manifest.format} ${quant} (${(manifest.bytes / 1e6).toFixed(2)} MB), ` +
    `${manifest.layout} ${manifest.input.dtype} input ${manifest.preprocess.crop}×${manifest.preprocess.crop}, ` +
    `preprocessing ${manifest.preprocess.algorithm}. Runtime ${runtime.name} ${runtime.version} on WebAssembly, ` +
    `${runtime.threads} thread(s)${globalThis.crossOriginIsolated ? "" : " (this page is not cross-origin isolated, so one thread)"}; ` +
    `model loaded in ${ms(state.loadMs)}, first inference ${ms(state.firstMs)}.${twin}`;
  const choices = globalThis.crossOriginIsolated ? [1, 2, 4].filter((n) => n <= (navigator.hardwareConcurrency || 1)) : [1];
  $("bench-threads").replaceChildren(
    `Threads: ${runtime.threads}.`,
    ...(choices.length > 1 ? [" Reload with ", ...choices.flatMap((n, i) => [i ? " · " : "",
      n === runtime.threads ? `${n}` : el("a", { href: `?threads=${n}` }, `${n}`)]), " thread(s)."] : [
      globalThis.crossOriginIsolated ? "" : " More need a cross-origin isolated page (COOP/COEP headers, as `dermmobile web --serve` sends).",
    ]),
  );
  document.body.dataset.state = "ready";
}

// -- one photo --------------------------------------------------------------------------------

async function classifyFile(file) {
  const { manifest, runtime, site } = state;
  const t0 = performance.now();
  const image = await decodeImage(file, site.max_pixels);
  const t1 = performance.now();
  const tensor = preprocess(image.pixels, image.width, image.height, 4);
  const t2 = performance.now();
  const logits = await runtime.run(tensor);
  const t3 = performance.now();
  const probabilities = softmax(logits);
  const ranked = topK(probabilities, TOP_K);
  const jpegFactor = (await isJpeg(file)) ? reducedDecodeFactor(image.width, image.height, manifest.preprocess) : 1;
  const result = {
    file: file.name,
    width: image.width,
    height: image.height,
    logits: Array.from(logits),
    top: ranked.map((i) => ({ index: i, label: manifest.labels[i], probability: probabilities[i] })),
    timing_ms: { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2 },
    python_decode_factor: jpegFactor,
  };
  renderResult(result, file);
  Object.assign(window.dermmobile, { lastResult: result, lastPhoto: file.name });
  return result;
}

function renderResult(result, file) {
  const list = el("ol", { class: "top", id: "top-list" });
  for (const [rank, item] of result.top.entries()) {
    const percent = item.probability < 0.0005 ? "< 0.1" : (item.probability * 100).toFixed(1);
    list.append(
      el("li", { class: rank === 0 ? "first" : "", "data-label": item.label },
        el("span", { class: "name" }, label(item.label)),
        el("span", { class: "pct" }, `${percent} %`),
        el("span", { class: "bar", style: `--p:${Math.max(0.5, item.probability * 100)}%` })),
    );
  }
  const t = result.timing_ms;
  const decodeNote = result.python_decode_factor > 1
    ? ` Decoded at full size ${result.width}×${result.height}; Python would decode this JPEG at 1/${result.python_decode_factor} first.`
    : ` Decoded at ${result.width}×${result.height}.`;
  const preview = el("img", { class: "preview", alt: "the photo being classified" });
  preview.src = URL.createObjectURL(file);
  preview.onload = () => URL.revokeObjectURL(preview.src);
  $("result").replaceChildren(
    preview,
    el("h2", { id: "top1", "data-label": result.top[0].label }, `Most similar: ${label(result.top[0].label)}`),
    list,
    el("p", { class: "timing", id: "timing" },
      `Inference ${ms(t.inference)} · preprocessing ${ms(t.preprocess)} · decoding ${ms(t.decode)}.${decodeNote}`),
    el("p", { class: "reminder" }, "These are similarities to the training classes, not a diagnosis."),
  );
  $("result").hidden = false;
  document.body.dataset.result = "shown";
}

// -- self-check against Python's golden samples -----------------------------------------------

async function goldenCheck() {
  const { golden, manifest, runtime } = state;
  if (!golden) throw new PageError("No golden samples", "this build has none", "Rebuild with `dermmobile web --images A.jpg B.jpg`.");
  const samples = [];
  for (const sample of golden.samples) {
    const rgb = await fetchBytes(`golden/${sample.rgb}`, "A golden image");
    if (rgb.length !== sample.width * sample.height * 3) {
      throw new PageError("A golden sample is damaged", `${sample.rgb} has ${rgb.length} bytes, expected ${sample.width}×${sample.height}×3`,
        "Rebuild the site with `dermmobile web`.");
    }
    const expected = new Float32Array((await fetchBytes(`golden/${sample.input}`, "A golden tensor")).buffer);
    const tensor = preprocess(rgb, sample.width, sample.height, 3);
    let differing = 0;
    let maxInputDiff = 0;
    const expectedBits = new Uint32Array(expected.buffer);
    const actualBits = new Uint32Array(tensor.buffer, tensor.byteOffset, tensor.length);
    for (let i = 0; i < tensor.length; i++) {
      if (actualBits[i] !== expectedBits[i]) differing++;
      maxInputDiff = Math.max(maxInputDiff, Math.abs(tensor[i] - expected[i]));
    }
    let quantizedEqual = null;
    if (sample.input_quantized) {
      const bytes = await fetchBytes(`golden/${sample.input_quantized}`, "A golden quantized tensor");
      const mine = quantize(tensor, manifest.input.dtype, manifest.input.scale, manifest.input.zero_point);
      quantizedEqual = bytes.length === mine.length && mine.every((v, i) => (v & 0xff) === bytes[i]);
    }
    const logits = await runtime.run(tensor);
    const maxLogitDiff = Math.max(...Array.from(logits, (v, i) => Math.abs(v - sample.logits[i])));
    const top1 = topK(softmax(logits), 1)[0];
    samples.push({
      id: sample.id,
      source: sample.source,
      input_values_differing: differing,
      input_max_abs_diff: maxInputDiff,
      quantized_input_equal: quantizedEqual,
      logits: Array.from(logits),
      top1,
      top1_label: manifest.labels[top1],
      python_top1: sample.top1,
      max_abs_logit_diff: maxLogitDiff,
    });
  }
  renderCheck(samples);
  return { samples, runtime: `${runtime.name} ${runtime.version}`, threads: runtime.threads };
}

function renderCheck(samples) {
  const rows = samples.map((s) =>
    el("tr", { class: s.top1 === s.python_top1 ? "ok" : "bad" },
      el("td", {}, s.source),
      el("td", {}, s.input_values_differing === 0 ? "identical" : `${s.input_values_differing} differ`),
      el("td", {}, label(s.top1_label)),
      el("td", {}, s.top1 === s.python_top1 ? "✓ same" : `✗ Python: ${label(state.manifest.labels[s.python_top1])}`),
      el("td", {}, s.max_abs_logit_diff.toExponential(1))));
  const agree = samples.filter((s) => s.top1 === s.python_top1).length;
  $("check-result").replaceChildren(
    el("p", { id: "check-summary" }, `${agree} of ${samples.length} golden images give Python's top-1.`),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["image", "input tensor", "browser top-1", "vs Python", "max |Δ logit|"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows))),
  );
}

// -- benchmark --------------------------------------------------------------------------------

async function goldenInputs() {
  if (!state.golden) {
    const crop = state.manifest.preprocess.crop;
    return [preprocess(new Uint8Array(crop * crop * 3).fill(128), crop, crop, 3)];
  }
  const inputs = [];
  for (const sample of state.golden.samples) {
    const rgb = await fetchBytes(`golden/${sample.rgb}`, "A golden image");
    inputs.push(preprocess(rgb, sample.width, sample.height, 3));
  }
  return inputs;
}

async function benchmark({ iterations = 100, warmup = 10 } = {}) {
  const { manifest, runtime, site } = state;
  iterations = Math.max(1, Math.min(100000, Math.floor(iterations)));
  const inputs = await goldenInputs();
  const progress = $("bench-progress");
  progress.max = iterations;
  progress.value = 0;
  progress.hidden = false;
  const samples = await timeRuns(runtime, inputs, { iterations, warmup, onProgress: (done) => (progress.value = done) });
  progress.hidden = true;
  const check = state.golden ? await goldenCheck() : null;
  const top1Matches = check ? check.samples.every((s) => s.top1 === s.python_top1) : null;
  const row = benchRow({ site, manifest, runtime, samples, warmup, loadMs: state.loadMs, firstMs: state.firstMs, top1Matches });
  state.lastRow = row;
  const stats = row.latency_ms;
  $("bench-result").replaceChildren(
    el("table", { id: "bench-table" },
      el("tbody", {}, ...[["p50", stats.p50], ["p90", stats.p90], ["p99", stats.p99], ["mean", stats.mean], ["std", stats.std]]
        .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, ms(v)))))),
    el("p", {}, `${row.iterations} runs after ${warmup} warm-up runs, ${runtime.threads} thread(s), ${row.device}.` +
      (top1Matches === null ? "" : top1Matches ? " Every golden image gives Python's top-1." : " Some golden images differ from Python!")),
  );
  $("bench-download").disabled = false;
  return row;
}

function downloadRows() {
  const row = state.lastRow;
  if (!row) return;
  const blob = new Blob([JSON.stringify(rowsFile([row]), null, 2) + "\n"], { type: "application/json" });
  const link = el("a", { download: `bench-rows-browser-${row.artifact}-t${row.threads}.json` });
  link.href = URL.createObjectURL(blob);
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// -- wiring -----------------------------------------------------------------------------------

function guard(action) {
  return async (...args) => {
    $("error").hidden = true;
    document.body.dataset.busy = "yes";
    try {
      return await action(...args);
    } catch (error) {
      showError(error);
      throw error;
    } finally {
      delete document.body.dataset.busy;
    }
  };
}

const api = {
  classifyFile: guard(classifyFile),
  goldenCheck: guard(goldenCheck),
  benchmark: guard(benchmark),
  state,
};
window.dermmobile = api;

$("photo-input").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) api.classifyFile(file).catch(() => {}).finally(() => (event.target.value = ""));
});
$("bench-run").addEventListener("click", () => api.benchmark({ iterations: Number($("bench-iterations").value) }).catch(() => {}));
$("bench-download").addEventListener("click", downloadRows);
$("check-run").addEventListener("click", () => api.goldenCheck().catch(() => {}));

api.ready = load().catch((error) => {
  showError(error);
  setStatus("Not ready: see the message below.");
  throw error;
});
api.ready.catch(() => {});
