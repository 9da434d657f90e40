package org.dermmobile.core;

/**
 * dermmobile-preprocess-v1's resize (older manifests): an antialiased triangle filter in double
 * precision, rows first, weights normalised to sum 1, no rounding between passes, computed only
 * for the centre crop window.
 */
final class ResampleV1 {
    private ResampleV1() {}

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
     * Packed RGB bytes (row-major, 3 a pixel, as Python's rgb.raw) -> the crop x crop x 3 window
     * of the image resized so its shorter side is {@code resize}, pixel values in [0, 255], HWC.
     */
    static double[] resample(byte[] rgb, int width, int height, int resize, int crop) {
        int[] size = Preprocessor.resizedSize(width, height, resize);
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
                        tmp[base + x * 3 + c] += wj * (rgb[(y * width + x) * 3 + c] & 0xFF);
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
}
