package org.dermmobile.core;

/** Memory order of an image tensor: channels first (PyTorch) or channels last (TFLite's native). */
public enum Layout {
    NCHW,
    NHWC;

    public static Layout parse(String text) {
        String upper = text == null ? "" : text.toUpperCase(java.util.Locale.ROOT);
        if (upper.equals("NHWC")) {
            return NHWC;
        }
        if (upper.equals("NCHW")) {
            return NCHW;
        }
        throw new IllegalArgumentException("image layout '" + text + "' is not NCHW or NHWC");
    }
}
