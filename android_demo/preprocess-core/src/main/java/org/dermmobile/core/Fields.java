package org.dermmobile.core;

import java.util.List;
import java.util.Map;

/**
 * Typed reads from a parsed JSON object ({@link Json}): each refuses a missing key or a value
 * of the wrong type with a message that names the file and the key.
 */
final class Fields {
    private Fields() {}

    @SuppressWarnings("unchecked")
    static Map<String, Object> obj(Map<String, Object> from, String key, String where) {
        Object value = from.get(key);
        if (!(value instanceof Map)) {
            throw new IllegalArgumentException(where + ": '" + key + "' must be an object");
        }
        return (Map<String, Object>) value;
    }

    static List<?> list(Map<String, Object> from, String key, String where) {
        Object value = from.get(key);
        if (!(value instanceof List)) {
            throw new IllegalArgumentException(where + ": '" + key + "' must be a list");
        }
        return (List<?>) value;
    }

    static String str(Map<String, Object> from, String key, String where) {
        Object value = from.get(key);
        if (!(value instanceof String)) {
            throw new IllegalArgumentException(where + ": '" + key + "' must be a string");
        }
        return (String) value;
    }

    static double num(Map<String, Object> from, String key, String where) {
        Object value = from.get(key);
        if (!(value instanceof Number)) {
            throw new IllegalArgumentException(where + ": '" + key + "' must be a number");
        }
        return ((Number) value).doubleValue();
    }

    static double[] doubles(List<?> values, String where) {
        double[] out = new double[values.size()];
        for (int i = 0; i < out.length; i++) {
            Object v = values.get(i);
            if (!(v instanceof Number)) {
                throw new IllegalArgumentException(where + ": item " + i + " is not a number");
            }
            out[i] = ((Number) v).doubleValue();
        }
        return out;
    }
}
