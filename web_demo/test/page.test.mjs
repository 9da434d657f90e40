// Node tests of the page's pure modules (no browser): node --test web_demo/test/page.test.mjs
// tests/test_web.py runs them; the browser itself is tested through drive.mjs.

import assert from "node:assert/strict";
import { test } from "node:test";

import { benchRow, rowsFile } from "../bench.js";
import { PageError, checkManifest, checkSite, sha256Hex } from "../manifest.js";
import { dequantize, quantize, roundHalfEven } from "../runtime.js";
import { percentile, softmax, summarize, topK } from "../stats.js";

function goodManifest() {
  return {
    schema: "dermmobile-artifact",
    schema_version: 1,
    format: "tflite",
    quantization: "int8",
    file: "m-uint8io.tflite",
    sha256: "a".repeat(64),
    bytes: 10,
    arch: "tiny_cnn",
    labels: ["acne", "wheal"],
    input: { name: "image", shape: [1, 3, 4, 4], dtype: "uint8", layout: "NCHW", scale: 0.02, zero_point: 111 },
    output: { name: "logits", shape: [1, 2], dtype: "uint8", layout: "", scale: 0.5, zero_point: 200 },
    preprocess: { resize: 5, crop: 4, algorithm: "dermmobile-preprocess-v2" },
  };
}

test("round half to even, as numpy", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 2.51].map((v) => roundHalfEven(v) + 0), [0, 2, 2, 0, -2, -2, 0, 3]);
});

test("quantize: float32 division, ties to even, clipped; dequantize inverts on the grid", () => {
  assert.deepEqual(Array.from(quantize([0.25, 0.75, -0.25, 100, -100], "int8", 0.5, 0)), [0, 2, 0, 127, -128]);
  assert.deepEqual(Array.from(quantize([0.25, 0.75, 100, -100], "uint8", 0.5, 128)), [128, 130, 255, 0]);
  assert.ok(quantize([1], "int8", 1, 0) instanceof Int8Array);
  assert.ok(quantize([1], "uint8", 1, 0) instanceof Uint8Array);
  // uint8 with zero point + 128 is the int8 quantization shifted by 128 (the TFLite twin's contract).
  const values = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 3);
  const int8 = quantize(values, "int8", 0.0183, -17);
  const uint8 = quantize(values, "uint8", 0.0183, 111);
  assert.ok(int8.every((v, i) => v + 128 === uint8[i]));
  assert.deepEqual(Array.from(dequantize(int8, 0.0183, -17)), Array.from(dequantize(uint8, 0.0183, 111)));
  assert.deepEqual(Array.from(dequantize(Int8Array.from([-17, -16]), 0.5, -17)), [0, 0.5]);
});

test("softmax and top-k as dermmobile/predict.py", () => {
  const p = softmax([1, 2, 3]);
  assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  assert.deepEqual(topK(p, 3), [2, 1, 0]);
  assert.deepEqual(topK([0.5, 0.5, 0.1], 2), [0, 1], "ties keep the lower index first");
  assert.throws(() => softmax([1, Number.NaN]), /non-finite/);
});

test("percentiles and std as numpy (linear, ddof 0)", () => {
  const values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  assert.equal(percentile(values, 50), 5.5);
  assert.ok(Math.abs(percentile(values, 90) - 9.1) < 1e-12);
  assert.ok(Math.abs(percentile(values, 99) - 9.91) < 1e-12);
  const stats = summarize([4, 2, 2, 4]);
  assert.deepEqual(stats, { p50: 3, p90: 4, p99: 4, mean: 3, std: 1, min: 2, max: 4, n: 4 });
});

test("a good manifest passes; every broken field is named", () => {
  assert.equal(checkManifest(goodManifest()).layout, "NCHW");
  const broken = {
    schema: { schema: "other" },
    labels: { labels: [] },
    "but there are 1 labels": { labels: ["acne"] },
    dtype: { input: { ...goodManifest().input, dtype: "float16" } },
    "zero_point": { input: { ...goodManifest().input, zero_point: 300 } },
    scale: { output: { ...goodManifest().output, scale: 0 } },
    "does not match": { input: { ...goodManifest().input, shape: [1, 3, 5, 5] } },
    "plain name": { file: "../x.tflite" },
    sha256: { sha256: "xyz" },
    format: { format: "coreml" },
    layout: { input: { ...goodManifest().input, layout: "CHWN" } },
  };
  for (const [needle, change] of Object.entries(broken)) {
    assert.throws(() => checkManifest({ ...goodManifest(), ...change }), (error) => {
      assert.ok(error instanceof PageError, needle);
      assert.ok(error.message.includes(needle), `${needle}: ${error.message}`);
      assert.match(error.hint, /dermmobile web/);
      return true;
    });
  }
  assert.throws(() => checkManifest([]), PageError);
});

test("site index: paths stay in their folders", () => {
  const site = {
    schema: "dermmobile-web-site", schema_version: 1, model: "model/m.tflite", manifest: "model/manifest.json",
    golden: "golden/golden.json", runtime: { name: "LiteRT.js" }, max_pixels: 40000000,
  };
  assert.equal(checkSite(site), site);
  for (const change of [{ model: "../m.tflite" }, { model: "model/../../x" }, { golden: "/etc/passwd" }, { max_pixels: 0 }, { schema: "x" }]) {
    assert.throws(() => checkSite({ ...site, ...change }), PageError);
  }
});

test("sha256 as Python's hashlib", async () => {
  assert.equal(await sha256Hex(new TextEncoder().encode("abc")),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});

test("bench rows carry what `dermmobile bench --merge` requires", () => {
  const row = benchRow({
    site: { source_artifact: { file: "m.tflite" } },
    manifest: { ...goodManifest(), file: "m-uint8io.tflite" },
    runtime: { name: "LiteRT.js", version: "2.5.3", threads: 2 },
    samples: [3, 1, 2],
    warmup: 5,
    loadMs: 100,
    firstMs: 20,
    top1Matches: true,
    device: "test device",
  });
  assert.equal(row.artifact, "m.tflite", "rows join the exported artifact, not the served twin");
  assert.equal(row.source, "browser");
  assert.equal(row.threads, 2);
  assert.equal(row.iterations, 3);
  assert.deepEqual(Object.keys(row.latency_ms).slice(0, 5), ["p50", "p90", "p99", "mean", "std"]);
  const file = rowsFile([row]);
  assert.equal(file.schema, "dermmobile-bench-rows");
  assert.equal(file.schema_version, 1);
});
