package org.dermmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Json.java: Gson's strict reader plus our limits, on good and hostile text. */
public class JsonTest {
    @Test
    public void jsonRoundTrip() {
        String text = "{\"a\": [1, 2.5, -3e-2, true, null, \"q\\\"\\u00e9<&>\"], \"b\": {}, \"c\": [{\"d\": []}]}";
        Map<String, Object> parsed = Json.parseObject(text, "t.json");
        assertEquals(parsed, Json.parseObject(Json.write(parsed), "written"));
        List<?> a = (List<?>) parsed.get("a");
        assertEquals(List.of(1L, 2.5, -0.03, true), a.subList(0, 4)); // integral numbers are Long, others Double
        assertEquals("q\"\u00e9<&>", a.get(5));
        assertTrue(Json.write(parsed).contains("\"q\\\"\u00e9<&>\"")); // no HTML escaping of < & >
        assertEquals(List.of(Map.of("x", 1L)), Json.parse(Json.write(List.of(Map.of("x", 1))), "list"));
        assertThrows(IllegalArgumentException.class, () -> Json.write(Map.of("p50", Double.NaN)));
    }

    static void assertRefused(String text, String why) {
        IllegalArgumentException exc = assertThrows(IllegalArgumentException.class, () -> Json.parseObject(text, "bad.json"));
        assertTrue(exc.getMessage(), exc.getMessage().startsWith("bad.json: "));
        assertTrue(exc.getMessage(), exc.getMessage().contains(why));
    }

    @Test
    public void jsonRefusesMalformedText() {
        assertRefused("{\"a\": 1,}", "not valid JSON");
        assertRefused("{\"a\": [1, 2", "not valid JSON"); // truncated
        assertRefused("{\"a\": \"abc", "not valid JSON");
        assertRefused("", "not valid JSON");
        assertRefused("{\"a\": 1} {}", "not valid JSON (malformed JSON at line 1 column 11 path $)");
        assertRefused("{\"a\": 1}\n x", "not valid JSON (malformed JSON at line 2 column 3 path $)");
        assertRefused("{a: 1}", "not valid JSON"); // lenient-only syntax
        assertRefused("{\"a\": 'x'}", "not valid JSON");
        assertRefused("{\"a\": NaN}", "not valid JSON");
        assertRefused("{\"a\": 1} // comment", "not valid JSON");
        assertRefused("[1, 2]", "expected a JSON object at the top level, found a list");
        assertRefused("\"x\"", "found string");
        assertRefused("{\"a\": 1e400}", "overflows a 64-bit float");
        assertRefused("{\"a\": 123456789012345678901234567890}", "overflows a 64-bit integer");
        assertRefused("{\"a\": 1, \"b\": {\"c\": 2, \"c\": 3}}", "the key 'c' appears twice");
        assertThrows(IllegalArgumentException.class, () -> Json.parseObject(new byte[] {'{', '"', (byte) 0xC3, '"', ':', '1', '}'}, "x"));
    }

    @Test
    public void jsonRefusesDeepNestingButTakesTheLimit() {
        String deepest = "[".repeat(Json.MAX_DEPTH - 1) + "]".repeat(Json.MAX_DEPTH - 1);
        assertEquals(1, Json.parseObject("{\"a\": " + deepest + "}", "ok").size());
        assertRefused("{\"a\": [" + deepest + "]}", "nested more than " + Json.MAX_DEPTH + " levels");
        assertRefused("{\"a\": " + "[".repeat(100_000), "nested more than"); // no stack overflow
    }
}
