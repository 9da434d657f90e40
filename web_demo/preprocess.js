// dermmobile-preprocess-v2 in plain JavaScript: decoded pixels -> the model's input tensor,
// bit for bit what dermmobile/preprocess.py computes (its docstring is the spec; the Node
// test web_demo/test/preprocess.test.mjs compares with tensors Python wrote). A plain ES
// module, no build step, no dependencies.
//
// 1. Decoding is the page's job. Python and Android decode a JPEG reduced in the DCT domain by
//    reducedDecodeFactor(); browsers cannot, so the page decodes it whole and the tensor of a
//    large JPEG differs from Python's there (and only there): resizing from the full image
//    instead of libjpeg's 1/2, 1/4 or 1/8 decode. Every other input gives Python's exact tensor.
// 2. Resize to (outW, outH), the shorter side exactly spec.resize, with Pillow's BILINEAR in
//    8-bit fixed point (src/libImaging/Resample.c): horizontal pass rounded to 8 bits, then
//    vertical pass rounded to 8 bits. Only the centre crop window is computed: each output
//    pixel depends on its own taps alone, so this equals resizing everything then cropping.
// 3. Normalise through a table: float32(((v / scale) - mean[c]) / std[c]), computed in double.
//
// Integer sums stay below 2^31 (255 * 2^22 plus rounding), exact in doubles and in `>> 22`.

export const ALGORITHM_V2 = "dermmobile-preprocess-v2";
const ALGORITHM_V1 = "dermmobile-preprocess-v1";
const PRECISION_BITS = 22; // Resample.c: 32 - 8 - 2
const HALF = 1 << (PRECISION_BITS - 1);
const DECODE_FACTORS = [8, 4, 2, 1];
const MAX_SIZE = 4096; // dermmobile.preprocess.MAX_SIZE

/** Throws unless `spec` (a manifest's "preprocess" object) is a v2 spec this module implements. */
export function checkSpec(spec) {
  const algorithm = spec && "algorithm" in spec ? spec.algorithm : ALGORITHM_V1; // no algorithm: written before v2
  if (algorithm === ALGORITHM_V1) {
    throw new Error(`this page implements ${ALGORITHM_V2} only; the model's manifest says ${ALGORITHM_V1}. ` +
      "Re-export the model with a dermmobile that writes v2 (every export since v2 does)");
  }
  if (algorithm !== ALGORITHM_V2) {
    throw new Error(`preprocessing algorithm ${JSON.stringify(algorithm)} is not known here; expected ${ALGORITHM_V2}`);
  }
  const { resize, crop } = spec;
  if (!Number.isInteger(resize) || !Number.isInteger(crop) || !(crop > 0 && crop <= resize && resize <= MAX_SIZE)) {
    throw new Error(`need integers 0 < crop <= resize <= ${MAX_SIZE}, got crop ${crop} and resize ${resize}`);
  }
  const scale = spec.scale ?? 255;
  const numbers = [...(spec.mean ?? []), ...(spec.std ?? []), scale];
  if (spec.mean?.length !== 3 || spec.std?.length !== 3 || !numbers.every(Number.isFinite) ||
      Math.min(...spec.std) <= 0 || !(scale > 0)) {
    throw new Error(`mean and std need three finite numbers each, std > 0 and scale > 0; got ${JSON.stringify(spec)}`);
  }
  if ((spec.interpolation ?? "bilinear") !== "bilinear" || (spec.color ?? "RGB") !== "RGB") {
    throw new Error(`only bilinear interpolation and RGB order are implemented, got ${spec.interpolation} / ${spec.color}`);
  }
  return { resize, crop, scale, mean: spec.mean, std: spec.std };
}

/**
 * The factor f a JPEG stored as width x height is decoded at in Python and on Android: the
 * largest of 8, 4, 2, 1 with floor(min(width, height) / f) >= spec.resize. Browsers decode
 * whole (f = 1 in effect); the page reports this number so a reader knows the difference.
 */
export function reducedDecodeFactor(width, height, spec) {
  const { resize } = checkSpec(spec);
  checkSize(width, height);
  const shorter = Math.min(width, height);
  return DECODE_FACTORS.find((f) => f === 1 || Math.floor(shorter / f) >= resize);
}

/** Output [width, height] with the shorter side exactly `shorter`, aspect kept (round half up). */
export function resizedSize(width, height, shorter) {
  checkSize(width, height);
  const scale = shorter / Math.min(width, height);
  if (width <= height) return [shorter, Math.max(shorter, Math.floor(height * scale + 0.5))];
  return [Math.max(shorter, Math.floor(width * scale + 0.5)), shorter];
}

function checkSize(width, height) {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new Error(`image has no pixels (${width}x${height})`);
  }
}

/**
 * Resample.c's precompute_coeffs + normalize_coeffs_8bpc (BILINEAR) for outputs
 * [first, first + count) of an axis of nIn -> nOut pixels: per output its first input and
 * its fixed-point weights. Same double operations, in the same order, as the C code.
 */
export function taps(nIn, nOut, first, count) {
  const scale = Math.fround(nIn) / nOut; // Pillow passes the sizes as C floats
  const filterscale = Math.max(scale, 1.0);
  const support = filterscale; // BILINEAR's support is 1
  const inverse = 1.0 / filterscale;
  const start = new Int32Array(count);
  const weights = [];
  for (let k = 0; k < count; k++) {
    const center = (first + k + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5)); // C's (int): toward zero
    const xmax = Math.min(nIn, Math.trunc(center + support + 0.5));
    const w = new Float64Array(xmax - xmin);
    let ww = 0.0;
    for (let x = 0; x < w.length; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * inverse);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    const fixed = new Int32Array(w.length);
    for (let x = 0; x < w.length; x++) {
      fixed[x] = Math.trunc(0.5 + (ww !== 0.0 ? w[x] / ww : w[x]) * (1 << PRECISION_BITS));
    }
    start[k] = xmin;
    weights.push(fixed);
  }
  return { start, weights };
}

function clip8(sum) {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Decoded pixels -> the input tensor of a v2 model.
 * pixels: Uint8Array or Uint8ClampedArray, row-major, `channels` (3 or 4) bytes a pixel; with
 * 4 the alpha byte is ignored: composite transparent images on white first, as Python does.
 * layout: "NCHW" (the manifest's default) or "NHWC". Returns a Float32Array of 3 * crop * crop.
 */
export function preprocessPixels(pixels, width, height, channels, spec, layout = "NCHW") {
  const { crop, resize, scale, mean, std } = checkSpec(spec);
  checkPixels(pixels, width, height, channels, layout);
  const [outW, outH] = resizedSize(width, height, resize);
  const cols = taps(width, outW, Math.floor((outW - crop) / 2), crop);
  const rows = taps(height, outH, Math.floor((outH - crop) / 2), crop);
  const y0 = rows.start[0];
  const y1 = rows.start[crop - 1] + rows.weights[crop - 1].length;
  const tmp = horizontalPass(pixels, width, channels, cols, crop, y0, y1);
  return verticalPass(tmp, rows, crop, y0, normalisationTables(scale, mean, std), layout);
}

function checkPixels(pixels, width, height, channels, layout) {
  checkSize(width, height);
  if (channels !== 3 && channels !== 4) throw new Error(`channels must be 3 (RGB) or 4 (RGBA), got ${channels}`);
  if (!(pixels instanceof Uint8Array || pixels instanceof Uint8ClampedArray) || pixels.length !== width * height * channels) {
    throw new Error(`expected ${width}x${height}x${channels} = ${width * height * channels} bytes in a Uint8Array, ` +
      `got ${pixels?.length} in a ${pixels?.constructor?.name}`);
  }
  if (layout !== "NCHW" && layout !== "NHWC") throw new Error(`layout must be NCHW or NHWC, got ${layout}`);
}

// Horizontal pass over the input rows y0..y1 that the crop's vertical taps read, rounded to uint8 RGB.
function horizontalPass(pixels, width, channels, cols, crop, y0, y1) {
  const stride = crop * 3;
  const tmp = new Uint8Array((y1 - y0) * stride);
  for (let y = y0; y < y1; y++) {
    const rowIn = y * width * channels;
    const rowOut = (y - y0) * stride;
    for (let ox = 0; ox < crop; ox++) {
      const w = cols.weights[ox];
      let at = rowIn + cols.start[ox] * channels;
      let r = HALF, g = HALF, b = HALF;
      for (let j = 0; j < w.length; j++, at += channels) {
        r += pixels[at] * w[j];
        g += pixels[at + 1] * w[j];
        b += pixels[at + 2] * w[j];
      }
      const o = rowOut + ox * 3;
      tmp[o] = clip8(r);
      tmp[o + 1] = clip8(g);
      tmp[o + 2] = clip8(b);
    }
  }
  return tmp;
}

// uint8 value -> normalised float32, per channel.
function normalisationTables(scale, mean, std) {
  return [0, 1, 2].map((c) => {
    const t = new Float32Array(256); // storing a double in a Float32Array rounds it to float32
    for (let v = 0; v < 256; v++) t[v] = (v / scale - mean[c]) / std[c];
    return t;
  });
}

// Vertical pass, rounded to uint8, then the normalisation table, into the model's layout.
function verticalPass(tmp, rows, crop, y0, table, layout) {
  const stride = crop * 3;
  const plane = crop * crop;
  const out = new Float32Array(3 * plane);
  for (let oy = 0; oy < crop; oy++) {
    const w = rows.weights[oy];
    const first = rows.start[oy] - y0;
    for (let i = 0; i < stride; i++) {
      let sum = HALF;
      for (let j = 0; j < w.length; j++) sum += tmp[(first + j) * stride + i] * w[j];
      const c = i % 3;
      const p = oy * crop + (i - c) / 3;
      out[layout === "NHWC" ? p * 3 + c : c * plane + p] = table[c][clip8(sum)];
    }
  }
  return out;
}
