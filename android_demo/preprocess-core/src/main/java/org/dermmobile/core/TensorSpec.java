package org.dermmobile.core;

import java.util.List;
import java.util.Map;

/** One model input or output as the manifest describes it (dermmobile.artifact.TensorSpec). */
public final class TensorSpec {
    public final String name;
    public final int[] shape;
    public final String dtype; // float32 | float16 | int8 | uint8
    public final String layout; // NCHW | NHWC for images, "" for logits
    public final Double scale; // quantized tensors: real = (q - zeroPoint) * scale
    public final Integer zeroPoint;

    public TensorSpec(String name, int[] shape, String dtype, String layout, Double scale, Integer zeroPoint) {
        this.name = name;
        this.shape = shape.clone();
        this.dtype = dtype;
        this.layout = layout;
        this.scale = scale;
        this.zeroPoint = zeroPoint;
        if (!java.util.Arrays.asList("float32", "float16", "int8", "uint8").contains(dtype)) {
            throw new IllegalArgumentException(
                    "tensor " + name + ": dtype '" + dtype + "' is not supported; expected float32, float16, int8 or uint8");
        }
        if (isQuantized() && (scale == null || zeroPoint == null || !(scale > 0))) {
            throw new IllegalArgumentException(
                    "tensor " + name + " is " + dtype + " but the manifest gives no positive scale and zero_point; re-export it");
        }
    }

    public boolean isQuantized() {
        return dtype.equals("int8") || dtype.equals("uint8");
    }

    public int elements() {
        int n = 1;
        for (int d : shape) {
            n *= d;
        }
        return n;
    }

    /** Bytes per element in the model's own buffer. */
    public int elementBytes() {
        switch (dtype) {
            case "float32": return 4;
            case "float16": return 2;
            default: return 1;
        }
    }

    static TensorSpec fromMap(Map<String, Object> map, String where) {
        List<?> dims = Fields.list(map, "shape", where);
        int[] shape = new int[dims.size()];
        for (int i = 0; i < shape.length; i++) {
            shape[i] = ((Number) dims.get(i)).intValue();
        }
        Object layout = map.get("layout");
        Object scale = map.get("scale");
        Object zeroPoint = map.get("zero_point");
        return new TensorSpec(
                String.valueOf(map.get("name")),
                shape,
                Fields.str(map, "dtype", where),
                layout == null ? "" : layout.toString(),
                scale == null ? null : ((Number) scale).doubleValue(),
                zeroPoint == null ? null : ((Number) zeroPoint).intValue());
    }
}
