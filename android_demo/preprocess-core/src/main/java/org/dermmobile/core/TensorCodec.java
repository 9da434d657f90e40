package org.dermmobile.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Float tensors <-> the bytes a model reads and writes, by the manifest's dtype: float32,
 * float16, or int8/uint8 with real = (q - zero_point) * scale. The rounding matches
 * dermmobile.targets.base.quantize_int8 (float32 maths, round half to even, then clip).
 */
public final class TensorCodec {
    private TensorCodec() {}

    /** Quantizes one value as numpy does: round(float32(value) / float32(scale)) + zero_point, clipped. */
    public static int quantize(float value, double scale, int zeroPoint, int lo, int hi) {
        float scaled = value / (float) scale;
        double q = Math.rint(scaled) + zeroPoint;
        return (int) Math.max(lo, Math.min(hi, q));
    }

    public static float dequantize(int q, double scale, int zeroPoint) {
        return ((float) q - (float) zeroPoint) * (float) scale;
    }

    /** The model-ready bytes of a tensor (direct, native order, as LiteRT wants them). */
    public static ByteBuffer encode(float[] values, TensorSpec spec) {
        if (values.length != spec.elements()) {
            throw new IllegalArgumentException("tensor " + spec.name + " needs " + spec.elements() + " values, got " + values.length);
        }
        ByteBuffer buffer = ByteBuffer.allocateDirect(values.length * spec.elementBytes()).order(ByteOrder.nativeOrder());
        switch (spec.dtype) {
            case "float32":
                for (float v : values) {
                    buffer.putFloat(v);
                }
                break;
            case "float16":
                for (float v : values) {
                    buffer.putShort(toHalf(v));
                }
                break;
            case "int8":
                for (float v : values) {
                    buffer.put((byte) quantize(v, spec.scale, spec.zeroPoint, -128, 127));
                }
                break;
            default: // uint8
                for (float v : values) {
                    buffer.put((byte) quantize(v, spec.scale, spec.zeroPoint, 0, 255));
                }
        }
        buffer.rewind();
        return buffer;
    }

    /** Quantized values as ints (int8: -128..127, uint8: 0..255), for comparisons. */
    public static int[] quantizeAll(float[] values, TensorSpec spec) {
        boolean signed = spec.dtype.equals("int8");
        int[] out = new int[values.length];
        for (int i = 0; i < values.length; i++) {
            out[i] = quantize(values[i], spec.scale, spec.zeroPoint, signed ? -128 : 0, signed ? 127 : 255);
        }
        return out;
    }

    /** A model's output bytes -> float values (logits). */
    public static float[] decode(ByteBuffer buffer, TensorSpec spec) {
        ByteBuffer in = buffer.duplicate().order(buffer.order());
        in.rewind();
        float[] out = new float[spec.elements()];
        for (int i = 0; i < out.length; i++) {
            switch (spec.dtype) {
                case "float32": out[i] = in.getFloat(); break;
                case "float16": out[i] = fromHalf(in.getShort()); break;
                case "int8": out[i] = dequantize(in.get(), spec.scale, spec.zeroPoint); break;
                default: out[i] = dequantize(in.get() & 0xFF, spec.scale, spec.zeroPoint);
            }
        }
        return out;
    }

    /** IEEE 754 binary16 bits of a float, round to nearest even (Java 17 has no Float.floatToFloat16). */
    public static short toHalf(float value) {
        int bits = Float.floatToRawIntBits(value);
        int sign = (bits >>> 16) & 0x8000;
        int exp = (bits >>> 23) & 0xFF;
        int mant = bits & 0x7FFFFF;
        if (exp == 0xFF) { // Inf or NaN
            return (short) (sign | 0x7C00 | (mant != 0 ? 0x200 : 0));
        }
        int e = exp - 127 + 15;
        if (e >= 0x1F) { // overflow -> Inf
            return (short) (sign | 0x7C00);
        }
        if (e <= 0) { // subnormal half or zero
            if (e < -10) {
                return (short) sign;
            }
            mant |= 0x800000;
            int shift = 14 - e;
            int half = mant >> shift;
            int rest = mant & ((1 << shift) - 1);
            int midpoint = 1 << (shift - 1);
            if (rest > midpoint || (rest == midpoint && (half & 1) == 1)) {
                half++;
            }
            return (short) (sign | half);
        }
        int half = (e << 10) | (mant >> 13);
        int rest = mant & 0x1FFF;
        if (rest > 0x1000 || (rest == 0x1000 && (half & 1) == 1)) {
            half++; // may carry into the exponent, which is still the right rounding (up to Inf)
        }
        return (short) (sign | half);
    }

    public static float fromHalf(short bits) {
        int h = bits & 0xFFFF;
        int sign = (h & 0x8000) << 16;
        int exp = (h >>> 10) & 0x1F;
        int mant = h & 0x3FF;
        if (exp == 0) {
            float magnitude = mant * 0x1p-24f;
            return sign == 0 ? magnitude : -magnitude;
        }
        if (exp == 0x1F) {
            return Float.intBitsToFloat(sign | 0x7F800000 | (mant << 13));
        }
        return Float.intBitsToFloat(sign | ((exp - 15 + 127) << 23) | (mant << 13));
    }
}
