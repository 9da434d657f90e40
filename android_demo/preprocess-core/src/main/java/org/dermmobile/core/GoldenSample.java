package org.dermmobile.core;

import java.util.Map;

/** One golden image ({@link Golden}) and what Python computed for it. */
public final class GoldenSample {
    public final String id;
    public final String sourceName;
    public final int width;
    public final int height;
    public final String rgbFile;
    public final String rgbSha256;
    public final String inputFile;
    public final String inputSha256;
    public final String quantizedFile; // null unless the model input is int8/uint8
    /** How Python decoded the file: its format ("JPEG", "PNG", ...), stored size and reduction factor; null in old sets. */
    public final String decodeFormat;
    public final int storedWidth;
    public final int storedHeight;
    public final int decodeFactor;
    public final float[] logits;
    public final double[] probabilities;
    public final int top1;
    public final String top1Label;

    GoldenSample(Map<String, Object> map, String where) {
        id = Fields.str(map, "id", where);
        sourceName = String.valueOf(map.get("source"));
        width = (int) Fields.num(map, "width", where);
        height = (int) Fields.num(map, "height", where);
        rgbFile = Fields.str(map, "rgb", where);
        rgbSha256 = Fields.str(map, "rgb_sha256", where);
        inputFile = Fields.str(map, "input", where);
        inputSha256 = Fields.str(map, "input_sha256", where);
        Object decode = map.get("decode");
        if (decode instanceof Map) {
            @SuppressWarnings("unchecked")
            Map<String, Object> d = (Map<String, Object>) decode;
            decodeFormat = Fields.str(d, "format", where + " decode");
            storedWidth = (int) Fields.num(d, "stored_width", where + " decode");
            storedHeight = (int) Fields.num(d, "stored_height", where + " decode");
            decodeFactor = (int) Fields.num(d, "factor", where + " decode");
        } else {
            decodeFormat = null;
            storedWidth = storedHeight = decodeFactor = 0;
        }
        Object quantized = map.get("input_quantized");
        quantizedFile = quantized == null ? null : quantized.toString();
        double[] raw = Fields.doubles(Fields.list(map, "logits", where), where + " logits");
        logits = new float[raw.length];
        for (int i = 0; i < raw.length; i++) {
            logits[i] = (float) raw[i]; // written from float32, so this is exact
        }
        probabilities = Fields.doubles(Fields.list(map, "probabilities", where), where + " probabilities");
        top1 = (int) Fields.num(map, "top1", where);
        top1Label = Fields.str(map, "top1_label", where);
    }}
