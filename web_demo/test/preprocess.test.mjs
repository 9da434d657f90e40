// web_demo/preprocess.js against the golden samples Python wrote (dermmobile.android.write_golden_samples).
//
//   DERMMOBILE_GOLDEN=DIR node --test web_demo/test/preprocess.test.mjs
//
// DIR holds a golden.json, or sub-folders that each do. tests/test_web_preprocess.py writes
// them and runs this (CI does); without DERMMOBILE_GOLDEN the golden test is skipped.
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { ALGORITHM_V2, preprocessPixels, reducedDecodeFactor, resizedSize, taps } from "../preprocess.js";

const SPEC = { resize: 8, crop: 6, interpolation: "bilinear", mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25],
  color: "RGB", exif_transpose: true, scale: 255.0, algorithm: ALGORITHM_V2 };

function goldenSets(root) {
  const sets = existsSync(join(root, "golden.json")) ? [root] : [];
  for (const name of readdirSync(root).sort()) {
    if (existsSync(join(root, name, "golden.json"))) sets.push(join(root, name));
  }
  return sets;
}

function toRgba(rgb) {
  const rgba = new Uint8ClampedArray((rgb.length / 3) * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i]; rgba[j + 1] = rgb[i + 1]; rgba[j + 2] = rgb[i + 2]; rgba[j + 3] = (i * 7) & 255; // alpha ignored
  }
  return rgba;
}

const root = process.env.DERMMOBILE_GOLDEN;

test("v2 tensors are bit-identical to Python's golden samples", { skip: !root && "DERMMOBILE_GOLDEN not set" }, () => {
  const sets = goldenSets(root);
  assert.ok(sets.length > 0, `${root} has no golden.json (nor sub-folders with one)`);
  let checked = 0;
  let refused = 0;
  const failures = [];
  for (const dir of sets) {
    const index = JSON.parse(readFileSync(join(dir, "golden.json"), "utf8"));
    const spec = index.manifest.preprocess;
    for (const sample of index.samples) {
      const rgb = new Uint8Array(readFileSync(join(dir, sample.rgb)));
      if (spec.algorithm !== ALGORITHM_V2) { // a v1 manifest: refused with a message that says why
        assert.throws(() => preprocessPixels(rgb, sample.width, sample.height, 3, spec, index.layout), /v2 only/);
        refused++;
        continue;
      }
      const expected = readFileSync(join(dir, sample.input));
      const actual = preprocessPixels(rgb, sample.width, sample.height, 3, spec, index.layout);
      const bytes = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength); // little-endian, as written
      const where = `${dir.split("/").pop()} ${sample.id} (${sample.width}x${sample.height} ${index.layout})`;
      if (!bytes.equals(expected)) {
        const got = new Float32Array(actual);
        const want = new Float32Array(expected.buffer.slice(expected.byteOffset, expected.byteOffset + expected.byteLength));
        const at = got.findIndex((v, i) => v !== want[i]);
        failures.push(`${where}: first difference at ${at}: ${got[at]} != ${want[at]}`);
      }
      const rgba = preprocessPixels(toRgba(rgb), sample.width, sample.height, 4, spec, index.layout);
      if (!Buffer.from(rgba.buffer).equals(bytes)) failures.push(`${where}: RGBA input gave another tensor than RGB`);
      const decode = sample.decode;
      if (decode) { // the factor Python decoded this JPEG at is the one this module names
        const jpeg = decode.format === "JPEG" || decode.format === "MPO";
        const factor = jpeg ? reducedDecodeFactor(decode.stored_width, decode.stored_height, spec) : 1;
        if (factor !== decode.factor) failures.push(`${where}: reduced decode factor ${factor} != golden ${decode.factor}`);
      }
      checked++;
    }
  }
  console.log(`golden samples checked: ${checked} bit-identical, ${refused} v1 refused, in ${sets.length} set(s)`);
  assert.deepEqual(failures, [], `JavaScript preprocessing drifted from dermmobile.preprocess:\n${failures.join("\n")}`);
  assert.ok(checked > 0, "no v2 golden sample was checked");
});

test("reduced decode factor keeps the shorter side at least resize", () => {
  const spec = { ...SPEC, resize: 256, crop: 224 };
  const cases = [[4032, 3024, 8], [3024, 4032, 8], [768, 529, 2], [2047, 2047, 4], [2048, 2048, 8], [511, 511, 1], [1, 1, 1]];
  for (const [w, h, f] of cases) assert.equal(reducedDecodeFactor(w, h, spec), f, `${w}x${h}`);
});

test("sizes round half up and taps are Resample.c's fixed point", () => {
  assert.deepEqual(resizedSize(129, 128, 64), [65, 64]);
  assert.deepEqual(resizedSize(3, 5, 64), [64, 107]);
  const t = taps(8, 4, 0, 4); // output 0: centre 1.0, inputs 0..2 at distances 0.5, 0.5, 1.5 (support 2)
  const a = Math.trunc(0.5 + (0.75 / 1.75) * 2 ** 22);
  const b = Math.trunc(0.5 + (0.25 / 1.75) * 2 ** 22);
  assert.equal(t.start[0], 0);
  assert.deepEqual([...t.weights[0]], [a, a, b]);
});

test("a same-size image passes through, normalised by the table", () => {
  const pixels = new Uint8Array(6 * 6 * 3).map((_, i) => (i * 37) & 255);
  const spec = { ...SPEC, resize: 6, crop: 6 };
  const out = preprocessPixels(pixels, 6, 6, 3, spec, "NHWC");
  for (let i = 0; i < pixels.length; i++) assert.equal(out[i], Math.fround((pixels[i] / 255 - 0.5) / 0.25));
});

test("what it cannot do is refused with a reason", () => {
  const pixels = new Uint8Array(10 * 10 * 3);
  const { algorithm, ...noAlgorithm } = SPEC;
  assert.equal(algorithm, ALGORITHM_V2);
  assert.throws(() => preprocessPixels(pixels, 10, 10, 3, { ...SPEC, algorithm: "dermmobile-preprocess-v1" }), /v2 only/);
  assert.throws(() => preprocessPixels(pixels, 10, 10, 3, noAlgorithm), /v2 only/); // no algorithm: an old v1 manifest
  assert.throws(() => preprocessPixels(pixels, 10, 10, 3, { ...SPEC, algorithm: "dermmobile-preprocess-v9" }), /not known/);
  assert.throws(() => preprocessPixels(pixels, 10, 10, 3, { ...SPEC, resize: 1e6 }), /crop/);
  assert.throws(() => preprocessPixels(pixels, 10, 10, 3, { ...SPEC, std: [0, 1, 1] }), /std/);
  assert.throws(() => preprocessPixels(pixels, 10, 10, 2, SPEC), /channels/);
  assert.throws(() => preprocessPixels(pixels, 10, 11, 3, SPEC), /bytes/);
  assert.throws(() => preprocessPixels(new Float32Array(300), 10, 10, 3, SPEC), /Uint8Array/);
  assert.throws(() => preprocessPixels(pixels, 10, 10, 3, SPEC, "NWHC"), /layout/);
  assert.throws(() => preprocessPixels(new Uint8Array(0), 0, 0, 3, SPEC), /no pixels/);
});
