package org.dermmobile.demo

import android.content.Context
import android.graphics.Bitmap
import android.graphics.ColorSpace
import android.graphics.ImageDecoder
import android.net.Uri

/** Same cap as dermmobile.data.MAX_PIXELS: far above any phone photo, below a decompression bomb. */
const val MAX_PIXELS = 40_000_000L

/**
 * Decodes a picked or captured image to an upright sRGB ARGB_8888 bitmap. ImageDecoder
 * applies the EXIF orientation, as dermmobile.data.decode_image does. JPEG decoders differ
 * by a level here and there between Pillow and Android, so bit-exact checks use the golden
 * samples' raw pixels instead.
 */
fun decodeUpright(context: Context, uri: Uri): Bitmap {
    val source = ImageDecoder.createSource(context.contentResolver, uri)
    val bitmap = ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
        val pixels = info.size.width.toLong() * info.size.height
        require(pixels <= MAX_PIXELS) { "${info.size.width}x${info.size.height} is above the $MAX_PIXELS pixel cap" }
        decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
        decoder.setTargetColorSpace(ColorSpace.get(ColorSpace.Named.SRGB))
    }
    return if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)
}
