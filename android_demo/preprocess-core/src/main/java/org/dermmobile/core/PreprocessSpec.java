package org.dermmobile.core;

import java.util.List;
import java.util.Map;

/** The preprocessing numbers of a manifest (dermmobile.preprocess.PreprocessSpec.to_dict()). */
public final class PreprocessSpec {
    /** Full decode, float64 filter: manifests exported before v2. */
    public static final String ALGORITHM_V1 = "dermmobile-preprocess-v1";
    /** Reduced JPEG decode, Pillow's 8-bit fixed-point BILINEAR, table normalisation. */
    public static final String ALGORITHM_V2 = "dermmobile-preprocess-v2";
    /** Largest sizes a manifest may ask for (dermmobile.preprocess.MAX_SIZE). */
    public static final int MAX_SIZE = 4096;
    private static final int[] DECODE_FACTORS = {8, 4, 2, 1};

    public final int resize;
    public final int crop;
    public final double[] mean;
    public final double[] std;
    public final double scale;
    public final String algorithm;

    public PreprocessSpec(int resize, int crop, double[] mean, double[] std, double scale, String algorithm) {
        if (!algorithm.equals(ALGORITHM_V1) && !algorithm.equals(ALGORITHM_V2)) {
            throw new IllegalArgumentException("preprocessing algorithm '" + algorithm + "' is not known to this app; expected "
                    + ALGORITHM_V1 + " or " + ALGORITHM_V2 + ". Update the app's preprocess-core");
        }
        if (!(crop > 0 && crop <= resize && resize <= MAX_SIZE)) {
            throw new IllegalArgumentException("need 0 < crop <= resize <= " + MAX_SIZE + ", got crop " + crop + " and resize " + resize);
        }
        if (mean.length != 3 || std.length != 3 || Math.min(std[0], Math.min(std[1], std[2])) <= 0 || !(scale > 0)) {
            throw new IllegalArgumentException("mean and std need three values each, std > 0 and scale > 0");
        }
        for (double v : new double[] {mean[0], mean[1], mean[2], std[0], std[1], std[2], scale}) {
            if (!Double.isFinite(v)) {
                throw new IllegalArgumentException("mean, std and scale must be finite numbers");
            }
        }
        this.resize = resize;
        this.crop = crop;
        this.mean = mean.clone();
        this.std = std.clone();
        this.scale = scale;
        this.algorithm = algorithm;
    }

    public boolean isV2() {
        return algorithm.equals(ALGORITHM_V2);
    }

    /**
     * The factor f a JPEG stored as width x height is decoded at (v2 step 1): the largest of
     * 8, 4, 2, 1 with min(width, height) / f >= resize (integer division); always 1 for v1.
     * On Android: {@code ImageDecoder.setTargetSampleSize(f)} (or {@code inSampleSize = f}), for
     * JPEG only: other formats are subsampled without filtering there, so they decode whole.
     */
    public int reducedDecodeFactor(int width, int height) {
        if (width <= 0 || height <= 0) {
            throw new IllegalArgumentException("image has no pixels (" + width + "x" + height + ")");
        }
        if (!isV2()) {
            return 1;
        }
        int shorter = Math.min(width, height);
        for (int f : DECODE_FACTORS) {
            if (shorter / f >= resize) {
                return f;
            }
        }
        return 1;
    }

    /** Refuses what this code does not implement, rather than computing something else. */
    static PreprocessSpec fromMap(Map<String, Object> map, String where) {
        // A spec without "algorithm" is v1: every dermmobile before v2 wrote v1 (as dermmobile.preprocess reads it).
        String algorithm = map.containsKey("algorithm") ? Fields.str(map, "algorithm", where) : ALGORITHM_V1;
        String interpolation = map.containsKey("interpolation") ? Fields.str(map, "interpolation", where) : "bilinear";
        String color = map.containsKey("color") ? Fields.str(map, "color", where) : "RGB";
        if (!interpolation.equals("bilinear") || !color.equals("RGB")) {
            throw new IllegalArgumentException(where + ": only bilinear interpolation and RGB order are implemented, got "
                    + interpolation + " / " + color);
        }
        List<?> mean = Fields.list(map, "mean", where);
        List<?> std = Fields.list(map, "std", where);
        try {
            return new PreprocessSpec(
                    (int) Fields.num(map, "resize", where),
                    (int) Fields.num(map, "crop", where),
                    Fields.doubles(mean, where + " mean"),
                    Fields.doubles(std, where + " std"),
                    map.containsKey("scale") ? Fields.num(map, "scale", where) : 255.0,
                    algorithm);
        } catch (IllegalArgumentException exc) {
            throw new IllegalArgumentException(where + ": " + exc.getMessage(), exc);
        }
    }
}
