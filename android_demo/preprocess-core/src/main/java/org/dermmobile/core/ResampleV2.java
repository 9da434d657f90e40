package org.dermmobile.core;

/**
 * dermmobile-preprocess-v2's resize: Pillow's BILINEAR (src/libImaging/Resample.c) in 8-bit
 * fixed point, horizontal pass then vertical, each rounded and clipped to uint8, computed only
 * for the centre crop window (each output pixel depends only on its own taps).
 */
final class ResampleV2 {
    /** Resample.c's PRECISION_BITS (32 - 8 - 2): taps are fixed point with 22 fractional bits. */
    static final int PRECISION_BITS = 22;

    private ResampleV2() {}

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
     * Packed RGB bytes (row-major, 3 a pixel) -> the crop x crop x 3 window of the image resized
     * so its shorter side is {@code resize}, HWC, levels 0..255.
     */
    static int[] resizeCrop(byte[] rgb, int width, int height, int resize, int crop) {
        int[] size = Preprocessor.resizedSize(width, height, resize);
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
}
