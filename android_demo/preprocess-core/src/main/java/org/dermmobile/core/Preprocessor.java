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
 *       ({@link Taps}): horizontal pass, rounded to uint8, then vertical pass, rounded to uint8;</li>
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
    /** Resample.c's PRECISION_BITS (32 - 8 - 2): taps are fixed point with 22 fractional bits. */
    static final int PRECISION_BITS = 22;

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
     * The filter weights of outputs [first, first + count) of an axis of nIn -> nOut pixels.
     * Only the non-zero span of each output is stored: start[o] and weights[o][k] for input
     * start[o] + k. Values equal dermmobile.preprocess.filter_weights (a dense matrix there).
     */
    static final class Weights {
        final int[] start;
        final double[][] weights;

        Weights(int nIn, int nOut, int first, int count) {
            double ratio = (double) nIn / nOut;
            double support = Math.max(ratio, 1.0);
            start = new int[count];
            weights = new double[count][];
            for (int k = 0; k < count; k++) {
                int o = first + k;
                double centre = (o + 0.5) * ratio;
                // weight > 0 only where |i + 0.5 - centre| < support
                int lo = Math.max(0, (int) Math.floor(centre - support - 0.5));
                int hi = Math.min(nIn - 1, (int) Math.ceil(centre + support - 0.5));
                double[] w = new double[hi - lo + 1];
                double sum = 0.0;
                for (int i = lo; i <= hi; i++) {
                    double value = Math.max(0.0, 1.0 - Math.abs(i + 0.5 - centre) / support);
                    w[i - lo] = value;
                    sum += value;
                }
                for (int j = 0; j < w.length; j++) {
                    w[j] /= sum;
                }
                start[k] = lo;
                weights[k] = w;
            }
        }
    }

    /**
     * v2: the fixed-point taps of outputs [first, first + count) of an axis of nIn -> nOut
     * pixels, computed as Pillow's Resample.c does (precompute_coeffs, then
     * normalize_coeffs_8bpc) for its BILINEAR filter, in the same double operations.
     */
    static final class Taps {
        final int[] start;
        final int[][] weights;

        Taps(int nIn, int nOut, int first, int count) {
            // Pillow passes the sizes as a float box: (double) (float) nIn is what it divides.
            double scale = (double) (float) nIn / nOut;
            double filterscale = Math.max(scale, 1.0);
            double support = filterscale; // BILINEAR's support is 1
            double inverse = 1.0 / filterscale;
            start = new int[count];
            weights = new int[count][];
            for (int k = 0; k < count; k++) {
                double center = (first + k + 0.5) * scale;
                int xmin = (int) (center - support + 0.5); // C's (int): truncation toward zero
                if (xmin < 0) {
                    xmin = 0;
                }
                int xmax = (int) (center + support + 0.5);
                if (xmax > nIn) {
                    xmax = nIn;
                }
                int n = xmax - xmin;
                double[] w = new double[n];
                double ww = 0.0;
                for (int x = 0; x < n; x++) {
                    double t = (x + xmin - center + 0.5) * inverse;
                    if (t < 0.0) {
                        t = -t;
                    }
                    w[x] = t < 1.0 ? 1.0 - t : 0.0;
                    ww += w[x];
                }
                int[] fixed = new int[n];
                for (int x = 0; x < n; x++) {
                    double normalized = ww != 0.0 ? w[x] / ww : w[x];
                    fixed[x] = (int) (0.5 + normalized * (1 << PRECISION_BITS));
                }
                start[k] = xmin;
                weights[k] = fixed;
            }
        }

        /** First input index any of these outputs reads, and one past the last. */
        int from() {
            return start[0];
        }

        int to() {
            return start[start.length - 1] + weights[weights.length - 1].length;
        }
    }

    private static int clip8(int sum) {
        int v = sum >> PRECISION_BITS;
        return v < 0 ? 0 : (v > 255 ? 255 : v);
    }

    /**
     * v2 steps 2 and 3: packed RGB bytes (row-major, 3 a pixel) -> the crop x crop x 3 window of
     * the resized image, HWC, levels 0..255.
     */
    public int[] resizeCrop(byte[] rgb, int width, int height) {
        checkRgb(rgb, width, height);
        int crop = spec.crop;
        int[] size = resizedSize(width, height, spec.resize);
        int left = (size[0] - crop) / 2;
        int top = (size[1] - crop) / 2;
        Taps cols = new Taps(width, size[0], left, crop);
        Taps rows = new Taps(height, size[1], top, crop);
        int y0 = rows.from();
        int y1 = rows.to();
        int half = 1 << (PRECISION_BITS - 1);
        // Horizontal pass over the input rows the crop's vertical taps read, rounded to uint8.
        int[] tmp = new int[(y1 - y0) * crop * 3];
        for (int y = y0; y < y1; y++) {
            int rowIn = y * width * 3;
            int rowOut = (y - y0) * crop * 3;
            for (int ox = 0; ox < crop; ox++) {
                int[] w = cols.weights[ox];
                int at = rowIn + cols.start[ox] * 3;
                int r = half;
                int g = half;
                int b = half;
                for (int j = 0; j < w.length; j++, at += 3) {
                    r += (rgb[at] & 0xFF) * w[j];
                    g += (rgb[at + 1] & 0xFF) * w[j];
                    b += (rgb[at + 2] & 0xFF) * w[j];
                }
                int o = rowOut + ox * 3;
                tmp[o] = clip8(r);
                tmp[o + 1] = clip8(g);
                tmp[o + 2] = clip8(b);
            }
        }
        // Vertical pass over those rows, rounded to uint8.
        int[] out = new int[crop * crop * 3];
        for (int oy = 0; oy < crop; oy++) {
            int[] w = rows.weights[oy];
            int first = rows.start[oy] - y0;
            for (int i = 0; i < crop * 3; i++) {
                int sum = half;
                for (int j = 0; j < w.length; j++) {
                    sum += tmp[(first + j) * crop * 3 + i] * w[j];
                }
                out[oy * crop * 3 + i] = clip8(sum);
            }
        }
        return out;
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
        return resample(width, height, (y, x, c) -> rgb[(y * width + x) * 3 + c] & 0xFF);
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

    private interface Source {
        int at(int y, int x, int c);
    }

    private double[] resample(int width, int height, Source source) {
        int crop = spec.crop;
        int[] size = resizedSize(width, height, spec.resize);
        int top = (size[1] - crop) / 2;
        int left = (size[0] - crop) / 2;
        Weights rows = new Weights(height, size[1], top, crop);
        Weights cols = new Weights(width, size[0], left, crop);
        // Pass 1: rows. tmp[oy][x][c] over every input column.
        double[] tmp = new double[crop * width * 3];
        for (int oy = 0; oy < crop; oy++) {
            double[] w = rows.weights[oy];
            int y0 = rows.start[oy];
            int base = oy * width * 3;
            for (int j = 0; j < w.length; j++) {
                double wj = w[j];
                int y = y0 + j;
                for (int x = 0; x < width; x++) {
                    for (int c = 0; c < 3; c++) {
                        tmp[base + x * 3 + c] += wj * source.at(y, x, c);
                    }
                }
            }
        }
        // Pass 2: columns.
        double[] out = new double[crop * crop * 3];
        for (int oy = 0; oy < crop; oy++) {
            int rowBase = oy * width * 3;
            for (int ox = 0; ox < crop; ox++) {
                double[] w = cols.weights[ox];
                int x0 = cols.start[ox];
                int o = (oy * crop + ox) * 3;
                for (int j = 0; j < w.length; j++) {
                    int t = rowBase + (x0 + j) * 3;
                    out[o] += w[j] * tmp[t];
                    out[o + 1] += w[j] * tmp[t + 1];
                    out[o + 2] += w[j] * tmp[t + 2];
                }
            }
        }
        return out;
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
