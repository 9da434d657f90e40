// The artifact manifest (dermmobile/artifact.py) read as untrusted input, and the page's errors.
//
// Every check names what was wrong, what was expected and what to do next, so a bad
// artifact shows a clear message on the page instead of a blank screen.

export const MANIFEST_SCHEMA = "dermmobile-artifact";
export const MANIFEST_SCHEMA_VERSION = 1;
export const SITE_SCHEMA = "dermmobile-web-site";
export const SITE_SCHEMA_VERSION = 1;
export const FORMATS = ["tflite", "onnx"];
export const DTYPES = ["float32", "int8", "uint8"];
const QUANT_RANGE = { int8: [-128, 127], uint8: [0, 255] };
const REBUILD = "rebuild the site with `dermmobile web --artifact ... --out ...`";

/** An error the page shows as it is: a title, what happened, and what to do next. */
export class PageError extends Error {
  constructor(title, detail, hint = "") {
    super(`${title}: ${detail}`);
    this.name = "PageError";
    this.title = title;
    this.detail = detail;
    this.hint = hint;
  }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isPositiveInt = (v) => Number.isInteger(v) && v > 0;

function fail(where, detail) {
  throw new PageError("This model cannot be used", `${where}: ${detail}`, `Re-export the artifact, then ${REBUILD}.`);
}

/** A plain file name inside the site's folder: no path separators, no "..". */
export function checkPlainName(name, where) {
  if (typeof name !== "string" || !name || name === "." || name === ".." || /[/\\]/.test(name)) {
    fail(where, `file name ${JSON.stringify(name)} is not a plain name`);
  }
  return name;
}

function checkTensor(spec, role, where) {
  if (!isObject(spec)) fail(where, `"${role}" must be an object`);
  if (!Array.isArray(spec.shape) || !spec.shape.every(isPositiveInt)) {
    fail(where, `${role}.shape must be a list of positive integers, got ${JSON.stringify(spec.shape)}`);
  }
  if (!DTYPES.includes(spec.dtype)) fail(where, `${role}.dtype ${JSON.stringify(spec.dtype)} is not one of ${DTYPES.join(", ")}`);
  if (spec.dtype in QUANT_RANGE) {
    const [low, high] = QUANT_RANGE[spec.dtype];
    if (typeof spec.scale !== "number" || !Number.isFinite(spec.scale) || spec.scale <= 0) {
      fail(where, `${role} is ${spec.dtype} but its scale ${JSON.stringify(spec.scale)} is not a positive number`);
    }
    if (!Number.isInteger(spec.zero_point) || spec.zero_point < low || spec.zero_point > high) {
      fail(where, `${role} zero_point ${JSON.stringify(spec.zero_point)} is not an integer in [${low}, ${high}]`);
    }
  }
}

/** Validate a parsed manifest; returns it, or throws a PageError naming the field. */
export function checkManifest(data, where = "manifest.json") {
  if (!isObject(data)) fail(where, "expected a JSON object");
  if (data.schema !== MANIFEST_SCHEMA || data.schema_version !== MANIFEST_SCHEMA_VERSION) {
    fail(where, `schema ${JSON.stringify(data.schema)} version ${JSON.stringify(data.schema_version)} is not ` +
      `"${MANIFEST_SCHEMA}" version ${MANIFEST_SCHEMA_VERSION}`);
  }
  if (!FORMATS.includes(data.format)) fail(where, `format ${JSON.stringify(data.format)} is not one of ${FORMATS.join(", ")}`);
  checkPlainName(data.file, where);
  if (typeof data.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(data.sha256)) fail(where, "sha256 must be 64 hex digits");
  if (!Array.isArray(data.labels) || !data.labels.length || !data.labels.every((l) => typeof l === "string" && l)) {
    fail(where, "labels must be a non-empty list of names");
  }
  checkTensor(data.input, "input", where);
  checkTensor(data.output, "output", where);
  const classes = data.output.shape.reduce((a, b) => a * b, 1);
  if (classes !== data.labels.length) {
    fail(where, `the output has ${classes} values but there are ${data.labels.length} labels`);
  }
  const layout = (data.input.layout || "NCHW").toUpperCase();
  if (!["NCHW", "NHWC"].includes(layout)) fail(where, `input.layout ${JSON.stringify(data.input.layout)} is not NCHW or NHWC`);
  if (!isObject(data.preprocess) || !isPositiveInt(data.preprocess.crop)) {
    fail(where, "preprocess must be an object with a positive integer crop");
  }
  const crop = data.preprocess.crop;
  const expected = layout === "NCHW" ? [1, 3, crop, crop] : [1, crop, crop, 3];
  if (JSON.stringify(data.input.shape) !== JSON.stringify(expected)) {
    fail(where, `input.shape ${JSON.stringify(data.input.shape)} does not match the ${crop}x${crop} ${layout} crop ` +
      `(${JSON.stringify(expected)})`);
  }
  return { ...data, layout };
}

/** Validate site.json (written by `dermmobile web`). */
export function checkSite(data, where = "site.json") {
  const bad = (detail) => {
    throw new PageError("This site is incomplete", `${where}: ${detail}`, `${REBUILD[0].toUpperCase()}${REBUILD.slice(1)}.`);
  };
  if (!isObject(data) || data.schema !== SITE_SCHEMA || data.schema_version !== SITE_SCHEMA_VERSION) {
    bad(`not a "${SITE_SCHEMA}" version ${SITE_SCHEMA_VERSION} index`);
  }
  for (const key of ["model", "manifest"]) {
    if (typeof data[key] !== "string" || !/^model\/[^/\\]+$/.test(data[key]) || data[key].includes("..")) {
      bad(`${key} must name a file in model/`);
    }
  }
  if (data.golden !== null && (typeof data.golden !== "string" || !/^golden\/[^/\\]+$/.test(data.golden))) {
    bad("golden must name a file in golden/ or be null");
  }
  if (!isObject(data.runtime) || typeof data.runtime.name !== "string") bad("runtime must be an object with a name");
  if (!isPositiveInt(data.max_pixels)) bad("max_pixels must be a positive integer");
  return data;
}

/** Lowercase hex sha256 of bytes (the same check load_artifact makes in Python). */
export async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}
