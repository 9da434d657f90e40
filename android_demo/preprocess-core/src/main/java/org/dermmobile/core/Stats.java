package org.dermmobile.core;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/** Latency summaries with numpy's definitions: linear-interpolated percentiles, population std. */
public final class Stats {
    private Stats() {}

    /** numpy.percentile(values, q) with the default "linear" method. */
    public static double percentile(double[] values, double q) {
        if (values.length == 0) {
            throw new IllegalArgumentException("no values");
        }
        double[] sorted = values.clone();
        Arrays.sort(sorted);
        double position = q / 100.0 * (sorted.length - 1);
        int lower = (int) Math.floor(position);
        int upper = Math.min(lower + 1, sorted.length - 1);
        double fraction = position - lower;
        return sorted[lower] + (sorted[upper] - sorted[lower]) * fraction;
    }

    /** {"p50","p90","p99","mean","std"} of latencies in milliseconds. */
    public static Map<String, Object> latencySummary(double[] millis) {
        double mean = 0.0;
        for (double v : millis) {
            mean += v;
        }
        mean /= millis.length;
        double variance = 0.0;
        for (double v : millis) {
            variance += (v - mean) * (v - mean);
        }
        variance /= millis.length;
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("p50", percentile(millis, 50));
        out.put("p90", percentile(millis, 90));
        out.put("p99", percentile(millis, 99));
        out.put("mean", mean);
        out.put("std", Math.sqrt(variance));
        return out;
    }
}
