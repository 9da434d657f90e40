package org.dermmobile.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Unit tests that need no golden files: the pieces Python does not write samples for. */
public class CoreTest {
    static final String MANIFEST = "{\"schema\": \"dermmobile-artifact\", \"schema_version\": 1, \"format\": \"tflite\","
            + " \"quantization\": \"int8\", \"file\": \"m.tflite\", \"sha256\": \"00\", \"arch\": \"tiny_cnn\","
            + " \"labels\": [\"a\", \"b\", \"c\"],"
            + " \"preprocess\": {\"resize\": 8, \"crop\": 6, \"interpolation\": \"bilinear\", \"mean\": [0.5, 0.5, 0.5],"
            + "  \"std\": [0.25, 0.25, 0.25], \"color\": \"RGB\", \"exif_transpose\": true, \"scale\": 255.0,"
            + "  \"algorithm\": \"dermmobile-preprocess-v1\"},"
            + " \"input\": {\"name\": \"x\", \"shape\": [1, 6, 6, 3], \"dtype\": \"int8\", \"layout\": \"NHWC\", \"scale\": 0.0157,"
            + "  \"zero_point\": -3},"
            + " \"output\": {\"name\": \"y\", \"shape\": [1, 3], \"dtype\": \"int8\", \"layout\": \"\", \"scale\": 0.1, \"zero_point\": 5}}";

    @Test
    public void resizedSizeRoundsHalfUpAndKeepsShorterSide() {
        assertArrayEquals(new int[] {65, 64}, Preprocessor.resizedSize(129, 128, 64)); // 64.5 -> 65
        assertArrayEquals(new int[] {64, 107}, Preprocessor.resizedSize(3, 5, 64)); // 106.67 -> 107
        assertArrayEquals(new int[] {256, 256}, Preprocessor.resizedSize(10, 10, 256));
        assertThrows(IllegalArgumentException.class, () -> Preprocessor.resizedSize(0, 10, 8));
    }

    static PreprocessSpec spec(int resize, int crop, String algorithm) {
        return new PreprocessSpec(resize, crop, new double[] {0, 0, 0}, new double[] {1, 1, 1}, 255.0, algorithm);
    }

    @Test
    public void sameSizeResampleIsIdentity() {
        byte[] rgb = new byte[4 * 4 * 3];
        for (int i = 0; i < rgb.length; i++) {
            rgb[i] = (byte) (i * 5);
        }
        double[] pixels = new Preprocessor(spec(4, 4, PreprocessSpec.ALGORITHM_V1)).pixels(rgb, 4, 4);
        int[] levels = new Preprocessor(spec(4, 4, PreprocessSpec.ALGORITHM_V2)).resizeCrop(rgb, 4, 4);
        for (int i = 0; i < rgb.length; i++) {
            assertEquals(rgb[i] & 0xFF, pixels[i], 1e-12);
            assertEquals(rgb[i] & 0xFF, levels[i]);
        }
    }

    @Test
    public void v2TapsAreResampleCFixedPoint() {
        // 8 -> 4: scale 2, support 2; output 0 has centre 1.0 and reads inputs 0..2 at distances 0.5, 0.5, 1.5
        ResampleV2.Taps taps = new ResampleV2.Taps(8, 4, 0, 4);
        assertEquals(0, taps.start[0]);
        int a = (int) (0.5 + 0.75 / 1.75 * (1 << 22));
        int b = (int) (0.5 + 0.25 / 1.75 * (1 << 22));
        assertArrayEquals(new int[] {a, a, b}, taps.weights[0]);
        // one input pixel, upscaled: every output reads it with weight 1.0
        ResampleV2.Taps up = new ResampleV2.Taps(1, 7, 0, 7);
        for (int[] w : up.weights) {
            assertArrayEquals(new int[] {1 << 22}, w);
        }
    }

    @Test
    public void reducedDecodeFactorIsTheLargestThatKeepsTheShorterSide() {
        PreprocessSpec v2 = spec(256, 224, PreprocessSpec.ALGORITHM_V2);
        int[][] cases = {{4032, 3024, 8}, {3024, 4032, 8}, {768, 529, 2}, {2047, 2047, 4}, {2048, 2048, 8}, {511, 511, 1}, {1, 1, 1}};
        for (int[] c : cases) {
            assertEquals(c[0] + "x" + c[1], c[2], v2.reducedDecodeFactor(c[0], c[1]));
            assertEquals(1, spec(256, 224, PreprocessSpec.ALGORITHM_V1).reducedDecodeFactor(c[0], c[1]));
        }
        assertThrows(IllegalArgumentException.class, () -> v2.reducedDecodeFactor(0, 5));
    }

    @Test
    public void weightsSumToOne() {
        for (int[] axis : new int[][] {{1000, 224}, {7, 256}, {256, 256}, {255, 256}}) {
            ResampleV1.Weights w = new ResampleV1.Weights(axis[0], axis[1], 0, axis[1]);
            for (double[] row : w.weights) {
                assertEquals(1.0, Arrays.stream(row).sum(), 1e-12);
            }
        }
    }

    @Test
    public void manifestParsesAndQuantizes() {
        ModelManifest manifest = ModelManifest.parse(MANIFEST, "test");
        assertEquals(Layout.NHWC, manifest.layout());
        assertEquals(List.of("a", "b", "c"), manifest.labels);
        // round half to even like numpy: 0.5 -> 0, 1.5 -> 2; then zero point and clipping
        assertEquals(-3, TensorCodec.quantize(0.5f * 0.0157f, 0.0157, -3, -128, 127));
        assertEquals(-1, TensorCodec.quantize(1.5f * 0.0157f, 0.0157, -3, -128, 127));
        assertEquals(127, TensorCodec.quantize(100f, 0.0157, -3, -128, 127));
        assertEquals(-128, TensorCodec.quantize(-100f, 0.0157, -3, -128, 127));
        ByteBuffer out = ByteBuffer.allocateDirect(3).order(ByteOrder.nativeOrder());
        out.put((byte) 5).put((byte) 15).put((byte) -5).rewind();
        float[] logits = TensorCodec.decode(out, manifest.output);
        assertArrayEquals(new float[] {0f, 1f, -1f}, logits, 1e-6f);
    }

    @Test
    public void halfFloatConversion() {
        assertEquals(0x3C00, TensorCodec.toHalf(1.0f) & 0xFFFF);
        assertEquals(0x7BFF, TensorCodec.toHalf(65504f) & 0xFFFF);
        assertEquals(0x7C00, TensorCodec.toHalf(1e6f) & 0xFFFF);
        assertEquals(0x2E66, TensorCodec.toHalf(0.1f) & 0xFFFF);
        assertEquals(0xC000, TensorCodec.toHalf(-2f) & 0xFFFF);
        assertEquals(0x0001, TensorCodec.toHalf(0x1p-24f) & 0xFFFF);
        assertEquals(0x0000, TensorCodec.toHalf(1e-9f) & 0xFFFF);
        for (float v : new float[] {1f, -2.5f, 0.1f, 1000f, 6e-5f}) {
            assertEquals(v, TensorCodec.fromHalf(TensorCodec.toHalf(v)), Math.abs(v) * 1e-3f);
        }
    }

    @Test
    public void softmaxAndTopK() {
        double[] p = Postprocess.softmax(new float[] {1f, 3f, 3f, -1f});
        assertEquals(1.0, Arrays.stream(p).sum(), 1e-12);
        List<Postprocess.Prediction> top = Postprocess.topK(p, List.of("w", "x", "y", "z"), 3);
        assertEquals(List.of(1, 2, 0), List.of(top.get(0).index, top.get(1).index, top.get(2).index)); // ties: lower index first
        assertThrows(IllegalArgumentException.class, () -> Postprocess.softmax(new float[] {Float.NaN}));
        assertEquals(1.0, Postprocess.softmax(new double[] {1000, -1000})[0], 1e-12); // no overflow
    }

    @Test
    public void percentilesMatchNumpy() {
        double[] values = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        assertEquals(5.5, Stats.percentile(values, 50), 1e-12); // numpy.percentile(range(1, 11), 50)
        assertEquals(9.1, Stats.percentile(values, 90), 1e-12);
        assertEquals(9.91, Stats.percentile(values, 99), 1e-12);
        Map<String, Object> summary = Stats.latencySummary(values);
        assertEquals(Math.sqrt(8.25), (double) summary.get("std"), 1e-12); // population std, as numpy.std
    }

    /** Writes a sample row to DERMMOBILE_BENCH_OUT (if set) so Python can check the schema. */
    @Test
    public void benchRowHasTheMergeSchema() throws Exception {
        ModelManifest manifest = ModelManifest.parse(MANIFEST, "test");
        Map<String, Object> row = BenchRow.create("Test Phone (Android 15, arm64-v8a)", manifest, 4, new double[] {3, 4, 5}, true);
        assertEquals(List.of("source", "device", "artifact", "format", "quantization", "threads", "latency_ms", "iterations",
                "top1_matches_golden"), List.copyOf(row.keySet()));
        String json = BenchRow.toJson(List.of(row));
        Object parsed = Json.parse(json, "bench rows");
        assertTrue(parsed instanceof List);
        String out = System.getProperty("dermmobile.bench.out", System.getenv("DERMMOBILE_BENCH_OUT"));
        if (out != null && !out.isEmpty()) {
            Files.write(new File(out).toPath(), json.getBytes(StandardCharsets.UTF_8));
        }
    }
}
