// The model runtimes in the browser, behind one interface: float32 image tensor in, float32 logits out.
//
// LiteRT.js runs .tflite, onnxruntime-web runs .onnx, both on WebAssembly (XNNPACK) on
// the CPU. Quantized I/O lives here, computed exactly as dermmobile/targets/base.py does:
// quantize = float32 division, round half to even, clip; dequantize = float32 (q - zp) * scale.
// LiteRT.js 2.5.3 takes float32, int32 and uint8 tensors only, so an int8 artifact reaches
// the page as its uint8-I/O twin (dermmobile/targets/tflite_uint8_io.py).

import { PageError } from "./manifest.js";

/** Round half to even, as numpy's np.round. */
export function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** float32 values -> Int8Array / Uint8Array with the manifest's scale and zero point. */
export function quantize(values, dtype, scale, zeroPoint) {
  const [low, high, Out] = dtype === "int8" ? [-128, 127, Int8Array] : [0, 255, Uint8Array];
  const s = Math.fround(scale);
  const out = new Out(values.length);
  for (let i = 0; i < values.length; i++) {
    // A double quotient of two float32 values, rounded once to float32, is the float32 quotient.
    const q = roundHalfEven(Math.fround(values[i] / s)) + zeroPoint;
    out[i] = q < low ? low : q > high ? high : q;
  }
  return out;
}

/** Quantized values -> float32, as Python's dequantize (the float32 product of two float32 values). */
export function dequantize(values, scale, zeroPoint) {
  const s = Math.fround(scale);
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = Math.fround((values[i] - zeroPoint) * s);
  return out;
}

function toInput(values, spec) {
  return spec.dtype === "float32" ? values : quantize(values, spec.dtype, spec.scale, spec.zero_point);
}

function fromOutput(values, spec) {
  return spec.dtype === "float32" ? Float32Array.from(values) : dequantize(values, spec.scale, spec.zero_point);
}

function checkDtype(actual, spec, role, runtimeName) {
  if (actual !== spec.dtype) {
    throw new PageError("The model and its manifest disagree",
      `${runtimeName} reports a ${actual} ${role}, the manifest says ${spec.dtype}`,
      "Re-export the artifact and rebuild the site with `dermmobile web`.");
  }
}

/** Threads this page can use: more than one needs cross-origin isolation (SharedArrayBuffer). */
export function usableThreads(requested) {
  if (!globalThis.crossOriginIsolated) return 1;
  const cores = navigator.hardwareConcurrency || 1;
  return Math.max(1, Math.min(requested || Math.min(4, cores), 16));
}

async function openLiteRt(site, manifest, bytes, threads) {
  const litert = await import("@litertjs/core");
  // The threaded build needs relaxed SIMD and cross-origin isolation; one thread uses the plain build.
  await litert.loadLiteRt(new URL(site.runtime.folder + "wasm/", location.href).href, { threads: threads > 1 });
  const model = await litert.loadAndCompile(bytes, { accelerator: "wasm", cpuOptions: { numThreads: threads } });
  const [input] = model.getInputDetails();
  const [output] = model.getOutputDetails();
  checkDtype(input.dtype, manifest.input, "input", "LiteRT.js");
  checkDtype(output.dtype, manifest.output, "output", "LiteRT.js");
  return {
    describe: [`input ${input.name} [${[...input.shape]}] ${input.dtype}`, `output ${output.name} [${[...output.shape]}] ${output.dtype}`],
    // Fed by position: litert-torch names the input args_0 inside the file, the manifest says "image".
    async run(values) {
      const tensor = new litert.Tensor(toInput(values, manifest.input), manifest.input.shape);
      let outputs;
      try {
        outputs = await model.run([tensor]);
        return fromOutput(await outputs[0].data(), manifest.output);
      } finally {
        tensor.delete();
        for (const out of outputs || []) out.delete();
      }
    },
    close() {
      model.delete();
    },
  };
}

async function openOrt(site, manifest, bytes, threads) {
  const ort = await import("onnxruntime-web");
  ort.env.wasm.wasmPaths = new URL(site.runtime.folder, location.href).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false;
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const [inputName] = session.inputNames;
  const [outputName] = session.outputNames;
  const typed = { float32: Float32Array, int8: Int8Array, uint8: Uint8Array };
  return {
    describe: [`input ${inputName} ${manifest.input.dtype}`, `output ${outputName} ${manifest.output.dtype}`],
    async run(values) {
      const data = toInput(values, manifest.input);
      const feeds = { [inputName]: new ort.Tensor(manifest.input.dtype, data, manifest.input.shape) };
      const results = await session.run(feeds);
      const out = results[outputName];
      try {
        if (!(out.data instanceof typed[manifest.output.dtype])) {
          checkDtype(out.type, manifest.output, "output", "onnxruntime-web");
        }
        return fromOutput(out.data, manifest.output);
      } finally {
        out.dispose();
      }
    },
    close() {
      session.release();
    },
  };
}

/**
 * Open the model bytes with the runtime for the manifest's format.
 * Returns {name, version, threads, describe, run(Float32Array) -> Promise<Float32Array>, close()}.
 */
export async function openRuntime(site, manifest, bytes, requestedThreads) {
  const threads = usableThreads(requestedThreads);
  const open = manifest.format === "tflite" ? openLiteRt : openOrt;
  let runtime;
  try {
    runtime = await open(site, manifest, bytes, threads);
  } catch (error) {
    if (error instanceof PageError) throw error;
    throw new PageError("The model could not be loaded", `${site.runtime.name} refused ${manifest.file}: ${error.message}`,
      "The file may be damaged or not a model: re-export it and rebuild the site with `dermmobile web`.");
  }
  return { name: site.runtime.name, version: site.runtime.version, threads, ...runtime };
}
