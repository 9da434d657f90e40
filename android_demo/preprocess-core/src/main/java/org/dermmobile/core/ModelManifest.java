package org.dermmobile.core;

import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * The parts of a dermmobile artifact manifest (dermmobile/artifact.py) an app needs: file,
 * hash, labels, preprocessing and the input/output tensors. Checks that they agree with
 * each other, so a wrong manifest fails at load time with a message, not with garbage.
 */
public final class ModelManifest {
    public static final String SCHEMA = "dermmobile-artifact";
    public static final int SCHEMA_VERSION = 1;

    public final String format;
    public final String quantization;
    public final String file;
    public final String sha256;
    public final String arch;
    public final List<String> labels;
    public final PreprocessSpec preprocess;
    public final TensorSpec input;
    public final TensorSpec output;

    private ModelManifest(Map<String, Object> map, String where) {
        Object schema = map.get("schema");
        Object version = map.get("schema_version");
        if (!SCHEMA.equals(schema) || !(version instanceof Number) || ((Number) version).intValue() != SCHEMA_VERSION) {
            throw new IllegalArgumentException(where + ": schema " + schema + " version " + version + " is not " + SCHEMA
                    + " version " + SCHEMA_VERSION + "; re-export the artifact with a matching dermmobile");
        }
        format = Fields.str(map, "format", where);
        quantization = Fields.str(map, "quantization", where);
        file = Fields.str(map, "file", where);
        sha256 = Fields.str(map, "sha256", where);
        arch = String.valueOf(map.get("arch"));
        List<String> names = new ArrayList<>();
        for (Object label : Fields.list(map, "labels", where)) {
            names.add(String.valueOf(label));
        }
        if (names.isEmpty()) {
            throw new IllegalArgumentException(where + ": labels must be a non-empty list");
        }
        labels = Collections.unmodifiableList(names);
        preprocess = PreprocessSpec.fromMap(Fields.obj(map, "preprocess", where), where + " preprocess");
        input = TensorSpec.fromMap(Fields.obj(map, "input", where), where + " input");
        output = TensorSpec.fromMap(Fields.obj(map, "output", where), where + " output");
        checkConsistent(where);
    }

    public static ModelManifest parse(String json, String where) {
        return new ModelManifest(Json.parseObject(json, where), where);
    }

    /** A manifest file (UTF-8 JSON), refused past {@link Json#MAX_BYTES}. */
    public static ModelManifest read(InputStream in, String where) throws IOException {
        return new ModelManifest(Json.parseObject(Bytes.readAll(in, Json.MAX_BYTES, where), where), where);
    }

    static ModelManifest fromMap(Map<String, Object> map, String where) {
        return new ModelManifest(map, where);
    }

    public Layout layout() {
        return Layout.parse(input.layout);
    }

    private void checkConsistent(String where) {
        int crop = preprocess.crop;
        int[] expected = layout() == Layout.NHWC ? new int[] {1, crop, crop, 3} : new int[] {1, 3, crop, crop};
        if (!java.util.Arrays.equals(input.shape, expected)) {
            throw new IllegalArgumentException(where + ": input shape " + java.util.Arrays.toString(input.shape) + " does not match layout "
                    + layout() + " and crop " + crop + " (expected " + java.util.Arrays.toString(expected) + ")");
        }
        if (output.elements() != labels.size()) {
            throw new IllegalArgumentException(where + ": output has " + output.elements() + " values but there are " + labels.size()
                    + " labels");
        }
    }
}
