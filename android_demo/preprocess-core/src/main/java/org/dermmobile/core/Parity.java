package org.dermmobile.core;

import java.io.IOException;
import java.util.List;

/**
 * Compares this module's preprocessing and post-processing with a golden sample that
 * Python wrote. Used by the JUnit tests on a PC and the instrumentation test on a phone.
 *
 * Tolerances (why these numbers):
 * - pixels: 1e-3 of one 8-bit level. Both sides run the same float64 filter; only the
 *   summation order differs (~1e-12), and Python's value is recovered from float32 (~3e-5).
 * - normalized values: 1e-4, far below one pixel level (1 / 255 / std ≈ 0.017).
 * - quantized input: identical wherever the two float32 tensors are identical; one step
 *   only where they differ in the last bit and straddle a rounding boundary.
 * - probabilities: 1e-4 given the same logits (double-precision softmax on both sides).
 * - reduced decode (v2): the factor this code picks for the stored size of a JPEG equals the
 *   one Python decoded with, and the decoded size is (ceil(W / f), ceil(H / f)), EXIF-rotated.
 * v2 inputs are integer arithmetic and one table lookup on both sides: expected bit-identical
 * (input sha256 "identical"), the tolerances above only bound what a failure looks like.
 */
public final class Parity {
    public static final double PIXEL_TOLERANCE = 1e-3;
    public static final double NORMALIZED_TOLERANCE = 1e-4;
    public static final double PROBABILITY_TOLERANCE = 1e-4;

    private Parity() {}

    /** The reduced decode Python used for this sample is the one the spec gives (v2 step 1). */
    static void checkDecode(PreprocessSpec spec, GoldenSample sample, StringBuilder problems) {
        if (sample.decodeFormat == null) {
            return; // a golden set written before v2 records no decode
        }
        boolean jpeg = sample.decodeFormat.equals("JPEG") || sample.decodeFormat.equals("MPO");
        int factor = jpeg ? spec.reducedDecodeFactor(sample.storedWidth, sample.storedHeight) : 1;
        if (factor != sample.decodeFactor) {
            problems.append("reduced decode factor ").append(factor).append(" != golden ").append(sample.decodeFactor).append("; ");
            return;
        }
        int w = (sample.storedWidth + factor - 1) / factor;
        int h = (sample.storedHeight + factor - 1) / factor;
        boolean same = sample.width == w && sample.height == h;
        boolean rotated = sample.width == h && sample.height == w; // EXIF orientation swaps the sides after decoding
        if (!same && !rotated) {
            problems.append("decoded size ").append(sample.width).append("x").append(sample.height).append(" is not ").append(w)
                    .append("x").append(h).append(" (stored size / ").append(factor).append(", rounded up); ");
        }
    }

    public static ParityResult check(Golden golden, GoldenSample sample) throws IOException {
        ModelManifest manifest = golden.manifest;
        Preprocessor pre = new Preprocessor(manifest.preprocess);
        Layout layout = manifest.layout();
        ParityResult result = new ParityResult();
        result.id = sample.id + " (" + sample.sourceName + " " + sample.width + "x" + sample.height + ", " + layout + ", "
                + manifest.input.dtype + ")";
        StringBuilder problems = new StringBuilder();

        checkDecode(manifest.preprocess, sample, problems);
        byte[] rgb = golden.rgb(sample);
        if (!Bytes.sha256(rgb).equals(sample.rgbSha256)) {
            problems.append("rgb file does not match its sha256 in golden.json; ");
        }
        float[] expected = golden.input(sample);
        float[] actual = pre.tensor(rgb, sample.width, sample.height, layout);
        if (expected.length != actual.length) {
            result.problems = "input has " + actual.length + " values, golden has " + expected.length;
            return result;
        }
        compareInput(pre, manifest, sample, actual, expected, result, problems);
        compareQuantized(manifest.input, actual, expected, golden.quantizedInput(sample), result, problems);
        comparePostprocess(manifest.labels, sample, result, problems);
        result.problems = problems.toString();
        return result;
    }

    /** The float input tensor: pixel and normalized differences, and v2's bit-identity. */
    private static void compareInput(Preprocessor pre, ModelManifest manifest, GoldenSample sample, float[] actual,
            float[] expected, ParityResult result, StringBuilder problems) {
        Layout layout = manifest.layout();
        int crop = manifest.preprocess.crop;
        int plane = crop * crop;
        for (int i = 0; i < actual.length; i++) {
            int channel = layout == Layout.NHWC ? i % 3 : i / plane;
            result.maxNormalizedDiff = Math.max(result.maxNormalizedDiff, Math.abs((double) actual[i] - expected[i]));
            double pixelDiff = Math.abs(pre.toPixel(actual[i], channel) - pre.toPixel(expected[i], channel));
            result.maxPixelDiff = Math.max(result.maxPixelDiff, pixelDiff);
        }
        if (!(result.maxPixelDiff <= PIXEL_TOLERANCE)) {
            problems.append("pixel diff ").append(result.maxPixelDiff).append(" > ").append(PIXEL_TOLERANCE).append("; ");
        }
        if (!(result.maxNormalizedDiff <= NORMALIZED_TOLERANCE)) {
            problems.append("normalized diff ").append(result.maxNormalizedDiff).append(" > ").append(NORMALIZED_TOLERANCE).append("; ");
        }
        result.inputSha256Equal = Bytes.sha256(Bytes.float32(actual)).equals(sample.inputSha256);
        if (manifest.preprocess.isV2() && !result.inputSha256Equal) {
            problems.append("v2 input tensor is not bit-identical to Python's; ");
        }
    }

    /** The int8/uint8 input tensor, when the model takes one (the rule in the class comment). */
    private static void compareQuantized(TensorSpec input, float[] actual, float[] expected, int[] expectedQ, ParityResult result,
            StringBuilder problems) {
        if (input.isQuantized() != (expectedQ != null)) {
            problems.append("golden has ").append(expectedQ == null ? "no" : "a").append(" quantized input but the manifest input is ")
                    .append(input.dtype).append("; ");
            return;
        }
        if (expectedQ == null) {
            return;
        }
        int[] actualQ = TensorCodec.quantizeAll(actual, input);
        for (int i = 0; i < actualQ.length; i++) {
            int step = Math.abs(actualQ[i] - expectedQ[i]);
            if (step > 1 || (step == 1 && actual[i] == expected[i])) {
                result.quantizedMismatches++;
            }
        }
        if (result.quantizedMismatches > 0) {
            problems.append(result.quantizedMismatches).append(" quantized input values differ; ");
        }
    }

    /** Softmax of the golden logits against the golden probabilities, and the top-1. */
    private static void comparePostprocess(List<String> labels, GoldenSample sample, ParityResult result, StringBuilder problems) {
        double[] probabilities = Postprocess.softmax(sample.logits);
        if (probabilities.length != sample.probabilities.length) {
            problems.append("probabilities have ").append(probabilities.length).append(" values, golden ")
                    .append(sample.probabilities.length).append("; ");
        } else {
            for (int i = 0; i < probabilities.length; i++) {
                result.maxProbabilityDiff = Math.max(result.maxProbabilityDiff, Math.abs(probabilities[i] - sample.probabilities[i]));
            }
        }
        if (!(result.maxProbabilityDiff <= PROBABILITY_TOLERANCE)) {
            problems.append("probability diff ").append(result.maxProbabilityDiff).append(" > ").append(PROBABILITY_TOLERANCE).append("; ");
        }
        List<Postprocess.Prediction> top = Postprocess.topK(probabilities, labels, 1);
        result.top1Equal = top.get(0).index == sample.top1 && top.get(0).label.equals(sample.top1Label);
        if (!result.top1Equal) {
            problems.append("top-1 ").append(top.get(0).label).append(" != golden ").append(sample.top1Label).append("; ");
        }
    }
}
