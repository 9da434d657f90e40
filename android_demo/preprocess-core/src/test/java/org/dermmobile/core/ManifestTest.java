package org.dermmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.junit.Test;

/** Manifests and golden indexes that are wrong: each refused with a message naming the file. */
public class ManifestTest {
    static final String MANIFEST = CoreTest.MANIFEST;

    @Test
    public void manifestRefusesMismatches() {
        String wrongShape = MANIFEST.replace("[1, 6, 6, 3]", "[1, 3, 6, 6]");
        assertThrows(IllegalArgumentException.class, () -> ModelManifest.parse(wrongShape, "test"));
        String otherAlgorithm = MANIFEST.replace("dermmobile-preprocess-v1", "dermmobile-preprocess-v9");
        assertThrows(IllegalArgumentException.class, () -> ModelManifest.parse(otherAlgorithm, "test"));
        String v2 = MANIFEST.replace("dermmobile-preprocess-v1", "dermmobile-preprocess-v2");
        assertTrue(ModelManifest.parse(v2, "test").preprocess.isV2());
        String huge = MANIFEST.replace("\"resize\": 8", "\"resize\": 1000000");
        assertThrows(IllegalArgumentException.class, () -> ModelManifest.parse(huge, "test"));
        String noScale = MANIFEST.replace("\"scale\": 0.0157,", "");
        assertThrows(IllegalArgumentException.class, () -> ModelManifest.parse(noScale, "test"));
    }

    @Test
    public void manifestRefusesWrongTypesAndLargeFiles() {
        assertThrows(IllegalArgumentException.class, () -> ModelManifest.parse(MANIFEST.replace("\"file\": \"m.tflite\"", "\"file\": 3"), "t"));
        assertThrows(IllegalArgumentException.class, () -> ModelManifest.parse(MANIFEST.replace("\"labels\": [", "\"labels\": {\"x\": ["), "t"));
        assertThrows(IllegalArgumentException.class,
                () -> ModelManifest.parse(MANIFEST.replace("\"crop\": 6", "\"crop\": \"6\""), "t"));
        byte[] big = new byte[Json.MAX_BYTES + 1];
        Arrays.fill(big, (byte) ' ');
        IOException exc = assertThrows(IOException.class,
                () -> ModelManifest.read(new ByteArrayInputStream(big), "assets/manifest.json"));
        assertTrue(exc.getMessage(), exc.getMessage().startsWith("assets/manifest.json: larger than"));
        IllegalArgumentException bad = assertThrows(IllegalArgumentException.class, () -> ModelManifest.read(
                new ByteArrayInputStream(MANIFEST.substring(0, 100).getBytes(StandardCharsets.UTF_8)), "assets/manifest.json"));
        assertTrue(bad.getMessage(), bad.getMessage().startsWith("assets/manifest.json: not valid JSON"));
    }

    @Test
    public void goldenIndexRefusesWrongTypes() {
        String index = "{\"schema\": \"dermmobile-golden\", \"schema_version\": 1, \"runtime\": \"t\", \"manifest\": " + MANIFEST
                + ", \"samples\": [\"x\"]}";
        Golden.Source source = name -> new ByteArrayInputStream(index.getBytes(StandardCharsets.UTF_8));
        IllegalArgumentException exc = assertThrows(IllegalArgumentException.class, () -> Golden.load(source, "g"));
        assertEquals("g/golden.json sample 0: must be an object", exc.getMessage());
        String duplicate = index.replace("\"runtime\": \"t\"", "\"runtime\": \"t\", \"runtime\": \"u\"");
        Golden.Source twice = name -> new ByteArrayInputStream(duplicate.getBytes(StandardCharsets.UTF_8));
        exc = assertThrows(IllegalArgumentException.class, () -> Golden.load(twice, "g"));
        assertTrue(exc.getMessage(), exc.getMessage().startsWith("g/golden.json: the key 'runtime' appears twice"));
    }
}
