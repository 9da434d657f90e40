package org.dermmobile.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One benchmark result from a phone, in the schema `dermmobile bench --merge` reads
 * (dermmobile/schemas/bench-row.schema.json, the app's keys in dermmobile/android.py BENCH_ROW_KEYS):
 * {"source": "android", "device", "artifact", "format": "tflite", "quantization", "threads",
 *  "latency_ms": {"p50","p90","p99","mean","std"}, "iterations", "top1_matches_golden"}.
 */
public final class BenchRow {
    public static final String SOURCE = "android";

    private BenchRow() {}

    public static Map<String, Object> create(String device, ModelManifest manifest, int threads, double[] latenciesMs,
            boolean top1MatchesGolden) {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("source", SOURCE);
        row.put("device", device);
        row.put("artifact", manifest.file);
        row.put("format", manifest.format);
        row.put("quantization", manifest.quantization);
        row.put("threads", threads);
        row.put("latency_ms", Stats.latencySummary(latenciesMs));
        row.put("iterations", latenciesMs.length);
        row.put("top1_matches_golden", top1MatchesGolden);
        return row;
    }

    /** The file the app writes: a JSON list of rows. */
    public static String toJson(List<Map<String, Object>> rows) {
        return Json.write(new ArrayList<Object>(rows)) + "\n";
    }
}
