package org.dermmobile.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * Golden samples written by dermmobile.android.write_golden_samples: per image the decoded
 * RGB bytes, the expected float32 input tensor (little-endian, the manifest's layout) and,
 * for a quantized input, the expected int8/uint8 tensor; the logits, probabilities and
 * top-1 of the runtime that wrote them; all indexed by golden.json.
 *
 * Files are read through {@link Source}, so the same code reads a folder on a PC and the
 * app's assets on a phone.
 */
public final class Golden {
    public static final String SCHEMA = "dermmobile-golden";
    public static final int SCHEMA_VERSION = 1;
    public static final String INDEX = "golden.json";

    /** Where golden files come from: a folder, or Android assets. */
    public interface Source {
        InputStream open(String name) throws IOException;
    }

    public static Source folder(File dir) {
        return name -> new FileInputStream(new File(dir, name));
    }

    public final Source source;
    public final ModelManifest manifest;
    public final String runtime;
    public final List<GoldenSample> samples;

    private Golden(Source source, Map<String, Object> index, String where) {
        Object schema = index.get("schema");
        Object version = index.get("schema_version");
        if (!SCHEMA.equals(schema) || !(version instanceof Number) || ((Number) version).intValue() != SCHEMA_VERSION) {
            throw new IllegalArgumentException(where + ": schema " + schema + " version " + version + " is not " + SCHEMA + " version "
                    + SCHEMA_VERSION + "; rewrite the golden samples with `dermmobile android`");
        }
        this.source = source;
        manifest = ModelManifest.fromMap(Fields.obj(index, "manifest", where), where + " manifest");
        runtime = String.valueOf(index.get("runtime"));
        List<GoldenSample> list = new ArrayList<>();
        for (Object item : Fields.list(index, "samples", where)) {
            String at = where + " sample " + list.size();
            if (!(item instanceof Map)) {
                throw new IllegalArgumentException(at + ": must be an object");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> map = (Map<String, Object>) item;
            list.add(new GoldenSample(map, at));
        }
        samples = Collections.unmodifiableList(list);
    }

    public static Golden load(Source source, String where) throws IOException {
        String path = where + "/" + INDEX;
        return new Golden(source, Json.parseObject(readAll(source, INDEX, Json.MAX_BYTES), path), path);
    }

    public byte[] rgb(GoldenSample sample) throws IOException {
        byte[] data = readAll(source, sample.rgbFile, (long) sample.width * sample.height * 3);
        if (data.length != sample.width * sample.height * 3) {
            throw new IOException(sample.rgbFile + ": " + data.length + " bytes, expected " + sample.width + "x" + sample.height + "x3");
        }
        return data;
    }

    /** The expected input tensor (float32 little-endian on disk). */
    public float[] input(GoldenSample sample) throws IOException {
        ByteBuffer buffer = ByteBuffer.wrap(readAll(source, sample.inputFile, 4L * manifest.input.elements())).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[buffer.remaining() / 4];
        buffer.asFloatBuffer().get(out);
        return out;
    }

    /** The expected quantized input tensor as ints (int8 read signed, uint8 unsigned), or null. */
    public int[] quantizedInput(GoldenSample sample) throws IOException {
        if (sample.quantizedFile == null) {
            return null;
        }
        byte[] data = readAll(source, sample.quantizedFile, manifest.input.elements());
        boolean signed = manifest.input.dtype.equals("int8");
        int[] out = new int[data.length];
        for (int i = 0; i < data.length; i++) {
            out[i] = signed ? data[i] : data[i] & 0xFF;
        }
        return out;
    }

    /** A golden file by plain name, refused past {@code maxBytes}. */
    public static byte[] readAll(Source source, String name, long maxBytes) throws IOException {
        if (name.contains("/") || name.contains("\\") || name.equals("..")) {
            throw new IOException("golden file name '" + name + "' is not a plain name; refused");
        }
        try (InputStream in = source.open(name)) {
            return Bytes.readAll(in, maxBytes, name);
        }
    }
}
