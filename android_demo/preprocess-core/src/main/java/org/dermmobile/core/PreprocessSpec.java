package org.dermmobile.core;

import java.util.List;
import java.util.Map;

/** The preprocessing numbers of a manifest (dermmobile.preprocess.PreprocessSpec.to_dict()). */
public final class PreprocessSpec {
    public static final String ALGORITHM = "dermmobile-preprocess-v1";

    public final int resize;
    public final int crop;
    public final double[] mean;
    public final double[] std;
    public final double scale;

    public PreprocessSpec(int resize, int crop, double[] mean, double[] std, double scale) {
        if (!(crop > 0 && crop <= resize)) {
            throw new IllegalArgumentException("crop (" + crop + ") must be positive and no larger than resize (" + resize + ")");
        }
        if (mean.length != 3 || std.length != 3 || Math.min(std[0], Math.min(std[1], std[2])) <= 0) {
            throw new IllegalArgumentException("mean and std need three values each and std > 0");
        }
        this.resize = resize;
        this.crop = crop;
        this.mean = mean.clone();
        this.std = std.clone();
        this.scale = scale;
    }

    /** Refuses what this code does not implement, rather than computing something else. */
    static PreprocessSpec fromMap(Map<String, Object> map, String where) {
        String algorithm = map.containsKey("algorithm") ? Json.str(map, "algorithm", where) : ALGORITHM;
        if (!algorithm.equals(ALGORITHM)) {
            throw new IllegalArgumentException(where + ": preprocessing algorithm '" + algorithm + "' is not known to this app; expected "
                    + ALGORITHM + ". Update the app's preprocess-core");
        }
        String interpolation = map.containsKey("interpolation") ? Json.str(map, "interpolation", where) : "bilinear";
        String color = map.containsKey("color") ? Json.str(map, "color", where) : "RGB";
        if (!interpolation.equals("bilinear") || !color.equals("RGB")) {
            throw new IllegalArgumentException(where + ": only bilinear interpolation and RGB order are implemented, got "
                    + interpolation + " / " + color);
        }
        List<?> mean = Json.list(map, "mean", where);
        List<?> std = Json.list(map, "std", where);
        return new PreprocessSpec(
                (int) Json.num(map, "resize", where),
                (int) Json.num(map, "crop", where),
                Json.doubles(mean, where + " mean"),
                Json.doubles(std, where + " std"),
                map.containsKey("scale") ? Json.num(map, "scale", where) : 255.0);
    }
}
