// The benchmark view's logic: time N inferences, and write rows `dermmobile bench --merge` reads.
//
// Rows follow dermmobile/bench/README.md ("Rows"): the required fields, with source
// "browser", so the browser becomes one more device in a bench report. Inference only
// (the runtime's run: quantize, copy in, invoke, copy out, dequantize), after warm-up,
// cycling over the golden images, like the Android app's benchmark screen.

import { summarize } from "./stats.js";

export const ROWS_SCHEMA = "dermmobile-bench-rows";
export const ROWS_SCHEMA_VERSION = 1;

const round = (value, digits = 4) => Number(value.toFixed(digits));

/** Time `iterations` calls of runtime.run over `inputs` (Float32Arrays), after `warmup` untimed calls. */
export async function timeRuns(runtime, inputs, { iterations = 100, warmup = 10, onProgress = () => {} } = {}) {
  for (let i = 0; i < warmup; i++) await runtime.run(inputs[i % inputs.length]);
  const samples = [];
  for (let i = 0; i < iterations; i++) {
    const input = inputs[i % inputs.length];
    const start = performance.now();
    await runtime.run(input);
    samples.push(performance.now() - start);
    if (i % 10 === 9) {
      onProgress(i + 1, iterations);
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page repaint the progress
    }
  }
  return samples;
}

/** A short description of this browser and machine for the "device" field. */
export function describeDevice(nav = globalThis.navigator) {
  const brands = nav.userAgentData?.brands?.filter((b) => !/not.a.brand/i.test(b.brand)) || [];
  const browser = brands.length ? brands.map((b) => `${b.brand} ${b.version}`).join(", ") : nav.userAgent;
  const platform = nav.userAgentData?.platform || nav.platform || "unknown platform";
  const mobile = nav.userAgentData?.mobile ? ", mobile" : "";
  return `${browser} on ${platform}${mobile} (${nav.hardwareConcurrency || "?"} logical cores)`;
}

/** One bench row. `artifact` is the exported file's name, so the row joins the host report's artifact. */
export function benchRow({ site, manifest, runtime, samples, warmup, loadMs, firstMs, top1Matches, device }) {
  const stats = summarize(samples);
  return {
    source: "browser",
    device: device || describeDevice(),
    artifact: site.source_artifact?.file || manifest.file,
    format: manifest.format,
    quantization: manifest.quantization,
    threads: runtime.threads,
    latency_ms: Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, k === "n" ? v : round(v)])),
    iterations: samples.length,
    warmup,
    load_ms: round(loadMs, 2),
    first_inference_ms: round(firstMs, 2),
    runtime: `${runtime.name} ${runtime.version} (WebAssembly, CPU)`,
    file_served: manifest.file,
    cross_origin_isolated: Boolean(globalThis.crossOriginIsolated),
    top1_matches_golden: top1Matches,
    user_agent: globalThis.navigator?.userAgent || "",
    created: new Date().toISOString(),
  };
}

/** The file the page downloads: the rows file `dermmobile bench --merge` accepts. */
export function rowsFile(rows) {
  return { schema: ROWS_SCHEMA, schema_version: ROWS_SCHEMA_VERSION, rows };
}
