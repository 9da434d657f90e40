// Photo file -> 8-bit RGBA pixels, upright, alpha composited on white, in the browser.
//
// As dermmobile.data.decode_image: EXIF orientation applied, transparency composited on
// white, embedded colour profiles not applied (Pillow ignores them too), and a pixel cap
// against decompression bombs. One difference, by necessity: browsers offer no reduced
// (DCT-domain) JPEG decode, so a JPEG is decoded at full size here, where Python's
// preprocessing spec v2 decodes it at 1/2, 1/4 or 1/8 size first (see the page's "About").

import { PageError } from "./manifest.js";

/** Decode an image Blob/File; returns {pixels: Uint8ClampedArray RGBA, width, height}. */
export async function decodeImage(blob, maxPixels) {
  if (!blob || !blob.size) {
    throw new PageError("This photo cannot be read", "the file is empty (0 bytes)", "Take or choose another photo.");
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (error) {
    throw new PageError("This photo cannot be read",
      `${blob.name || "the file"} is not an image this browser can decode, or it is damaged (${error.message})`,
      "Take or choose a JPEG or PNG photo.");
  }
  try {
    const { width, height } = bitmap;
    if (!width || !height) throw new PageError("This photo cannot be read", "it has no pixels", "Choose another photo.");
    if (width * height > maxPixels) {
      throw new PageError("This photo is too large",
        `${width}x${height} is above the ${maxPixels.toLocaleString("en")} pixel cap (the same cap as dermmobile's Python)`,
        "Choose a smaller copy of the photo.");
    }
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true, alpha: false });
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0);
    return { pixels: context.getImageData(0, 0, width, height).data, width, height };
  } finally {
    bitmap.close();
  }
}

/** True when the file is a JPEG (by its first bytes, not its name). */
export async function isJpeg(blob) {
  const head = new Uint8Array(await blob.slice(0, 3).arrayBuffer());
  return head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
}
