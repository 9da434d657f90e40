package org.dermmobile.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/** Bytes from files that may be hostile (bounded reads), their sha256, and float32 tensors as bytes. */
public final class Bytes {
    private Bytes() {}

    /** All of {@code in}, refused once it passes {@code maxBytes}: a huge file fails before it fills memory. */
    public static byte[] readAll(InputStream in, long maxBytes, String where) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] chunk = new byte[1 << 16];
        int n;
        while ((n = in.read(chunk)) > 0) {
            if (out.size() + (long) n > maxBytes) {
                throw new IOException(where + ": larger than the " + maxBytes + "-byte limit for this file; refused");
            }
            out.write(chunk, 0, n);
        }
        return out.toByteArray();
    }

    public static String sha256(byte[] data) {
        try {
            byte[] digest = MessageDigest.getInstance("SHA-256").digest(data);
            StringBuilder hex = new StringBuilder();
            for (byte b : digest) {
                hex.append(String.format("%02x", b & 0xFF));
            }
            return hex.toString();
        } catch (NoSuchAlgorithmException exc) {
            throw new IllegalStateException(exc);
        }
    }

    /** float32 little-endian bytes of a tensor, the form whose sha256 golden.json records. */
    public static byte[] float32(float[] values) {
        ByteBuffer buffer = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        buffer.asFloatBuffer().put(values);
        return buffer.array();
    }
}
