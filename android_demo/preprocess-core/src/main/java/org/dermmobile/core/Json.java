package org.dermmobile.core;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonToken;
import java.io.IOException;
import java.io.StringReader;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * JSON through Gson, with the limits of dermmobile/readers.py for files that may be hostile
 * (manifests, golden indexes). Gson's strict {@link JsonReader} does the lexing and refuses
 * malformed text, NaN and trailing commas; Gson 2.10 has no depth limit and keeps the last of
 * two equal keys, so this class builds the tree itself and refuses nesting deeper than
 * {@link #MAX_DEPTH}, a key that appears twice (two parsers could pick different values) and a
 * number that overflows a double (1e400) or a long. Objects become LinkedHashMap, arrays
 * ArrayList, numbers Long (written without fraction or exponent) or Double, plus String,
 * Boolean and null. Errors name the file ({@code where}) and Gson's line, column and path.
 */
public final class Json {
    /** Largest JSON file read: a 198-class manifest with parity details is well under 1 MB. */
    public static final int MAX_BYTES = 16 << 20;
    /** Deepest nesting accepted (a top-level object is depth 1); our documents nest 4 levels. */
    public static final int MAX_DEPTH = 32;

    // Pretty-printed like Python's json.dump(indent=2); nulls kept; NaN refused (strict JSON has none).
    private static final Gson WRITER = new GsonBuilder().setPrettyPrinting().serializeNulls().disableHtmlEscaping().create();

    private Json() {}

    public static Object parse(String text, String where) {
        if (text.length() > MAX_BYTES) {
            throw refused(where, "larger than the " + (MAX_BYTES >> 20) + " MB limit for a JSON file; refused");
        }
        JsonReader reader = new JsonReader(new StringReader(text)); // strict unless setLenient(true)
        try {
            Object value = value(reader, 0, where);
            if (reader.peek() != JsonToken.END_DOCUMENT) { // strict Gson already refuses text after the value
                throw refused(where, "more text after the JSON value at " + reader.getPath());
            }
            return value;
        } catch (IOException | IllegalStateException exc) { // MalformedJsonException, EOFException: truncated
            // Gson's advice is for the programmer; the user needs to know the file is malformed, and where.
            String message = exc.getMessage().replace("Use JsonReader.setLenient(true) to accept malformed JSON", "malformed JSON");
            throw refused(where, "not valid JSON (" + message + ")");
        }
    }

    /** Strict UTF-8 bytes (a file's content) to a JSON object. */
    public static Map<String, Object> parseObject(byte[] data, String where) {
        try {
            String text = StandardCharsets.UTF_8.newDecoder().decode(ByteBuffer.wrap(data)).toString();
            return parseObject(text, where);
        } catch (CharacterCodingException exc) {
            throw refused(where, "not UTF-8 text (" + exc + ")");
        }
    }

    @SuppressWarnings("unchecked")
    public static Map<String, Object> parseObject(String text, String where) {
        Object value = parse(text, where);
        if (!(value instanceof Map)) {
            throw refused(where, "expected a JSON object at the top level, found " + describe(value));
        }
        return (Map<String, Object>) value;
    }

    private static Object value(JsonReader reader, int depth, String where) throws IOException {
        JsonToken token = reader.peek();
        if ((token == JsonToken.BEGIN_OBJECT || token == JsonToken.BEGIN_ARRAY) && depth >= MAX_DEPTH) {
            throw refused(where, "JSON nested more than " + MAX_DEPTH + " levels deep at " + reader.getPath() + "; refused");
        }
        switch (token) {
            case BEGIN_OBJECT:
                Map<String, Object> map = new LinkedHashMap<>();
                reader.beginObject();
                while (reader.hasNext()) {
                    String key = reader.nextName();
                    if (map.containsKey(key)) {
                        throw refused(where, "the key '" + key + "' appears twice in one object at " + reader.getPath() + "; refused");
                    }
                    map.put(key, value(reader, depth + 1, where));
                }
                reader.endObject();
                return map;
            case BEGIN_ARRAY:
                List<Object> list = new ArrayList<>();
                reader.beginArray();
                while (reader.hasNext()) {
                    list.add(value(reader, depth + 1, where));
                }
                reader.endArray();
                return list;
            case STRING:
                return reader.nextString();
            case NUMBER:
                return number(reader.nextString(), reader.getPath(), where);
            case BOOLEAN:
                return reader.nextBoolean();
            case NULL:
                reader.nextNull();
                return null;
            default: // END_DOCUMENT: empty text
                throw refused(where, "not valid JSON (no value at " + reader.getPath() + ")");
        }
    }

    private static Object number(String token, String path, String where) {
        boolean integral = token.indexOf('.') < 0 && token.indexOf('e') < 0 && token.indexOf('E') < 0;
        try {
            if (integral) {
                return Long.parseLong(token);
            }
            double value = Double.parseDouble(token);
            if (!Double.isInfinite(value)) {
                return value;
            }
        } catch (NumberFormatException exc) {
            // a 20-digit integer: out of range like 1e400
        }
        throw refused(where, "the number " + abbreviate(token) + " at " + path + " overflows a 64-bit "
                + (integral ? "integer" : "float") + "; refused");
    }

    private static String abbreviate(String s) {
        return s.length() <= 40 ? s : s.substring(0, 40) + "...";
    }

    private static String describe(Object value) {
        return value == null ? "null" : value instanceof List ? "a list" : value.getClass().getSimpleName().toLowerCase();
    }

    private static IllegalArgumentException refused(String where, String what) {
        return new IllegalArgumentException(where + ": " + what);
    }

    /** Pretty-printed JSON of maps, lists, strings, numbers, booleans and null; NaN is refused. */
    public static String write(Object value) {
        return WRITER.toJson(value);
    }
}
