package org.dermmobile.core;

/**
 * Decoded RGB pixels -> the model's input tensor, exactly as dermmobile.preprocess does it
 * (see that module's docstring; the golden tests compare the two):
 *
 * <ol>
 *   <li>resize so the shorter side is {@code resize}: s = resize / min(W, H), output size
 *       round_half_up(W * s) x round_half_up(H * s);</li>
 *   <li>compute only the centre crop x crop window (left = (outW - crop) / 2, top likewise);</li>
 *   <li>antialiased triangle filter in double precision, rows first then columns, support
 *       max(n_in / n_out, 1), weights normalised to sum 1, no rounding between passes;</li>
 *   <li>value = (pixel / scale - mean[c]) / std[c], cast to float, laid out CHW or HWC.</li>
 * </ol>
 *
 * Decoding (JPEG, EXIF rotation) is the platform's job: on Android, ImageDecoder.
 */
public final class Preprocessor {
    private final PreprocessSpec spec;

    public Preprocessor(PreprocessSpec spec) {
        this.spec = spec;
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
     * Packed RGB bytes (row-major, 3 bytes a pixel, as Python's rgb.raw) -> crop x crop x 3
     * resampled pixel values in [0, 255], HWC, double.
     */
    public double[] pixels(byte[] rgb, int width, int height) {
        if (rgb.length != width * height * 3) {
            throw new IllegalArgumentException("expected " + width + "x" + height + "x3 = " + (width * height * 3)
                    + " RGB bytes, got " + rgb.length);
        }
        return resample(width, height, (y, x, c) -> rgb[(y * width + x) * 3 + c] & 0xFF);
    }

    /**
     * Android Bitmap.getPixels() ARGB ints (unpremultiplied) -> resampled pixels. Transparent
     * pixels are composited on white, as dermmobile.data.to_rgb does (to within rounding).
     */
    public double[] pixelsArgb(int[] argb, int width, int height) {
        if (argb.length != width * height) {
            throw new IllegalArgumentException("expected " + (width * height) + " ARGB pixels, got " + argb.length);
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
        return pixels(rgb, width, height);
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

    /** Resampled HWC pixels -> normalized float32 tensor values in the given layout. */
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

    public float[] tensor(byte[] rgb, int width, int height, Layout layout) {
        return normalize(pixels(rgb, width, height), layout);
    }

    public float[] tensorArgb(int[] argb, int width, int height, Layout layout) {
        return normalize(pixelsArgb(argb, width, height), layout);
    }
}
