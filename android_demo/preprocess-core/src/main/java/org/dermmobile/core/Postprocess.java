package org.dermmobile.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;

/** Logits -> probabilities -> top-k, as dermmobile.android.softmax / top_k do it (double precision). */
public final class Postprocess {
    private Postprocess() {}

    /** One ranked class. */
    public static final class Prediction {
        public final int index;
        public final String label;
        public final double probability;

        Prediction(int index, String label, double probability) {
            this.index = index;
            this.label = label;
            this.probability = probability;
        }

        @Override
        public String toString() {
            return label + " " + String.format(java.util.Locale.ROOT, "%.1f%%", 100 * probability);
        }
    }

    /** Numerically stable softmax: exp(l - max) / sum. Non-finite logits are an error. */
    public static double[] softmax(float[] logits) {
        double[] values = new double[logits.length];
        for (int i = 0; i < logits.length; i++) {
            values[i] = logits[i];
        }
        return softmax(values);
    }

    public static double[] softmax(double[] logits) {
        double max = Double.NEGATIVE_INFINITY;
        for (double v : logits) {
            if (!Double.isFinite(v)) {
                throw new IllegalArgumentException("the model returned a non-finite logit (" + v + "); the artifact is broken");
            }
            max = Math.max(max, v);
        }
        double[] out = new double[logits.length];
        double sum = 0.0;
        for (int i = 0; i < logits.length; i++) {
            out[i] = Math.exp(logits[i] - max);
            sum += out[i];
        }
        for (int i = 0; i < out.length; i++) {
            out[i] /= sum;
        }
        return out;
    }

    /** The k most probable classes, highest first; ties keep the lower class index first. */
    public static List<Prediction> topK(double[] probabilities, List<String> labels, int k) {
        if (labels.size() != probabilities.length) {
            throw new IllegalArgumentException(probabilities.length + " probabilities but " + labels.size() + " labels");
        }
        Integer[] order = new Integer[probabilities.length];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
        }
        Arrays.sort(order, Comparator.comparingDouble((Integer i) -> -probabilities[i]).thenComparingInt(i -> i));
        List<Prediction> out = new ArrayList<>();
        for (int r = 0; r < Math.min(k, order.length); r++) {
            out.add(new Prediction(order[r], labels.get(order[r]), probabilities[order[r]]));
        }
        return out;
    }
}
