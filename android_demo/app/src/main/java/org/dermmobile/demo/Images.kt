package org.dermmobile.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.ColorSpace
import android.graphics.ImageDecoder
import android.net.Uri
import org.dermmobile.core.PreprocessSpec

/** Same cap as dermmobile.data.MAX_PIXELS: far above any phone photo, below a decompression bomb. */
const val MAX_PIXELS = 40_000_000L

/**
 * Decodes a picked or captured image to an upright sRGB ARGB_8888 bitmap, as the model's
 * preprocessing spec says (dermmobile.preprocess, step 1). ImageDecoder applies the EXIF
 * orientation, as dermmobile.data.decode_image does. For a v2 spec a JPEG is decoded reduced
 * in the DCT domain by [PreprocessSpec.reducedDecodeFactor] (libjpeg-turbo scaling, what
 * Pillow's `draft` does in Python), to (ceil(W / f), ceil(H / f)): a 12 MP photo becomes
 * 504 x 378 before any Java code touches it. Other formats are decoded whole (Android's sample
 * size would subsample them without filtering). JPEG decoders differ by a level here and there
 * between Pillow and Android, so bit-exact checks use the golden samples' raw pixels instead.
 */
fun decodeUpright(context: Context, uri: Uri, spec: PreprocessSpec): Bitmap {
    val source = ImageDecoder.createSource(context.contentResolver, uri)
    val bitmap = ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
        val width = info.size.width
        val height = info.size.height
        require(width.toLong() * height <= MAX_PIXELS) { "${width}x$height is above the $MAX_PIXELS pixel cap" }
        decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
        decoder.setTargetColorSpace(ColorSpace.get(ColorSpace.Named.SRGB))
        if (info.mimeType == "image/jpeg") {
            decoder.setTargetSampleSize(spec.reducedDecodeFactor(width, height)) // 1 for a v1 spec: full size
        }
    }
    return if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
}
