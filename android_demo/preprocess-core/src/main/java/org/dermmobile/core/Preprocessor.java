package org.dermmobile.core;

/**
 * Decoded RGB pixels -> the model's input tensor, exactly as dermmobile.preprocess does it
 * (that module's docstring is the spec; the golden tests compare the two bit for bit).
 *
 * <p>dermmobile-preprocess-v2:
 * <ol>
 *   <li>(decoding, the platform's job) a JPEG is decoded reduced by
 *       {@link PreprocessSpec#reducedDecodeFactor}; on Android {@code setTargetSampleSize(f)};</li>
 *   <li>resize so the shorter side is {@code resize}: s = resize / min(W, H), output size
 *       round_half_up(W * s) x round_half_up(H * s), with Pillow's BILINEAR in 8-bit fixed point
 *       ({@link ResampleV2}): horizontal pass, rounded to uint8, then vertical pass, rounded to uint8;</li>
 *   <li>only the centre crop x crop window is computed (left = (outW - crop) / 2, top likewise):
 *       each output pixel depends only on its own taps, so this equals resizing all then cropping;</li>
 *   <li>value = table[c][pixel], table[c][v] = (float) ((v / scale - mean[c]) / std[c]) in double;
 *       laid out CHW or HWC.</li>
 * </ol>
 *
 * <p>dermmobile-preprocess-v1 (older manifests): the same sizes and crop, an antialiased
 * triangle filter in double precision (rows first, weights normalised to sum 1, no rounding
 * between passes), then value = (float) ((pixel / scale - mean[c]) / std[c]).
 *
 * Decoding (JPEG, EXIF rotation) is the platform's job: on Android, ImageDecoder.
 */
public final class Preprocessor {
    private final PreprocessSpec spec;
    private final float[][] table; // v2: [channel][level]

    public Preprocessor(PreprocessSpec spec) {
        this.spec = spec;
        table = new float[3][256];
        for (int c = 0; c < 3; c++) {
            for (int v = 0; v < 256; v++) {
                table[c][v] = (float) ((v / spec.scale - spec.mean[c]) / spec.std[c]);
            }
        }
    }

    /** Output (width, height) with the shorter side exactly {@code shorter}, aspect kept. */
    public static int[] resizedSize(int width, int height, int shorter) {
        if (width <= 0 || height <= 0) {
            throw new IllegalArgumentException("image has no pixels (" + width + "x" + height + ")");
        }
        double scale = (double) shorter / Math.min(width, height);
        if (width <= height) {
            return new int[] {shorter, Math.max(shorter, (int) Math.floor(height * scale + 0.5))};
        }
        return new int[] {Math.max(shorter, (int) Math.floor(width * scale + 0.5)), shorter};
    }

    /**
     * v2 steps 2 and 3: packed RGB bytes (row-major, 3 a pixel) -> the crop x crop x 3 window of
     * the resized image, HWC, levels 0..255.
     */
    public int[] resizeCrop(byte[] rgb, int width, int height) {
        checkRgb(rgb, width, height);
        return ResampleV2.resizeCrop(rgb, width, height, spec.resize, spec.crop);
    }

    private static void checkRgb(byte[] rgb, int width, int height) {
        if (width <= 0 || height <= 0 || rgb.length != (long) width * height * 3) {
            throw new IllegalArgumentException("expected " + width + "x" + height + "x3 = " + ((long) width * height * 3)
                    + " RGB bytes, got " + rgb.length);
        }
    }

    /** v2 step 4: levels -> normalized float32 through the per-channel table. */
    public float[] normalizeLevels(int[] levels, Layout layout) {
        int plane = spec.crop * spec.crop;
        float[] out = new float[plane * 3];
        for (int p = 0; p < plane; p++) {
            for (int c = 0; c < 3; c++) {
                out[layout == Layout.NHWC ? p * 3 + c : c * plane + p] = table[c][levels[p * 3 + c]];
            }
        }
        return out;
    }

    /**
     * v1: packed RGB bytes (row-major, 3 bytes a pixel, as Python's rgb.raw) -> crop x crop x 3
     * resampled pixel values in [0, 255], HWC, double.
     */
    public double[] pixels(byte[] rgb, int width, int height) {
        checkRgb(rgb, width, height);
        return ResampleV1.resample(rgb, width, height, spec.resize, spec.crop);
    }

    /**
     * Android Bitmap.getPixels() ARGB ints (unpremultiplied) -> packed RGB bytes. Transparent
     * pixels are composited on white, as dermmobile.data.to_rgb does (to within rounding).
     */
    public static byte[] argbToRgb(int[] argb, int width, int height) {
        if (argb.length != (long) width * height) {
            throw new IllegalArgumentException("expected " + ((long) width * height) + " ARGB pixels, got " + argb.length);
        }
        byte[] rgb = new byte[width * height * 3];
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i];
            int a = (p >>> 24) & 0xFF;
            for (int c = 0; c < 3; c++) {
                int v = (p >>> (16 - 8 * c)) & 0xFF;
                rgb[i * 3 + c] = (byte) (a == 255 ? v : Math.round((v * a + 255 * (255 - a)) / 255.0f));
            }
        }
        return rgb;
    }

    /** v1: resampled HWC pixels -> normalized float32 tensor values in the given layout. */
    public float[] normalize(double[] pixels, Layout layout) {
        int crop = spec.crop;
        int plane = crop * crop;
        float[] out = new float[plane * 3];
        for (int p = 0; p < plane; p++) {
            for (int c = 0; c < 3; c++) {
                float value = (float) ((pixels[p * 3 + c] / spec.scale - spec.mean[c]) / spec.std[c]);
                out[layout == Layout.NHWC ? p * 3 + c : c * plane + p] = value;
            }
        }
        return out;
    }

    /** The normalized value back to the pixel domain (for comparisons and display). */
    public double toPixel(float value, int channel) {
        return ((double) value * spec.std[channel] + spec.mean[channel]) * spec.scale;
    }

    /** Packed RGB bytes of the decoded image -> the model's input tensor, by the spec's algorithm. */
    public float[] tensor(byte[] rgb, int width, int height, Layout layout) {
        if (spec.isV2()) {
            return normalizeLevels(resizeCrop(rgb, width, height), layout);
        }
        return normalize(pixels(rgb, width, height), layout);
    }

    public float[] tensorArgb(int[] argb, int width, int height, Layout layout) {
        return tensor(argbToRgb(argb, width, height), width, height, layout);
    }
}
