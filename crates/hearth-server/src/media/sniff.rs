//! An image's format from its magic bytes, and its dimensions from its header alone.
//!
//! The format a client or server claims is never trusted: the bytes decide. Dimensions are
//! checked before anything decodes pixels, so a small file declaring a huge canvas (a
//! decompression bomb) is refused for the price of reading a header.

use std::io::Cursor;

use super::MediaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    Png,
    Jpeg,
    Webp,
    Gif,
}

impl ImageKind {
    /// The format the bytes start with, if one of those supported.
    pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageKind::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(ImageKind::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(ImageKind::Gif)
        } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
            Some(ImageKind::Webp)
        } else {
            None
        }
    }

    pub fn mime_type(self) -> &'static str {
        match self {
            ImageKind::Png => "image/png",
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Webp => "image/webp",
            ImageKind::Gif => "image/gif",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Png => "PNG",
            ImageKind::Jpeg => "JPEG",
            ImageKind::Webp => "WebP",
            ImageKind::Gif => "GIF",
        }
    }

    fn image_format(self) -> image::ImageFormat {
        match self {
            ImageKind::Png => image::ImageFormat::Png,
            ImageKind::Jpeg => image::ImageFormat::Jpeg,
            ImageKind::Webp => image::ImageFormat::WebP,
            ImageKind::Gif => image::ImageFormat::Gif,
        }
    }
}

/// The format and dimensions of `bytes`, refusing anything unrecognised, with a header that
/// does not parse, or with a side of 0 or over `max_side` pixels.
pub fn inspect(bytes: &[u8], max_side: u32) -> Result<(ImageKind, u32, u32), MediaError> {
    let kind = ImageKind::sniff(bytes).ok_or(MediaError::NotAnImage)?;
    let reader = image::ImageReader::with_format(Cursor::new(bytes), kind.image_format());
    let (width, height) = reader
        .into_dimensions()
        .map_err(|_| MediaError::BadHeader { kind: kind.name() })?;
    if width == 0 || height == 0 || width > max_side || height > max_side {
        return Err(MediaError::BadDimensions {
            width,
            height,
            limit: max_side,
        });
    }
    Ok((kind, width, height))
}

/// Small real images of each format, for tests here and in the loader's.
#[cfg(test)]
pub(crate) mod samples {
    use image::{ExtendedColorType, ImageEncoder};

    use super::ImageKind;

    /// A grey `width`x`height` image encoded as `kind`.
    pub fn encode(kind: ImageKind, width: u32, height: u32) -> Vec<u8> {
        let pixels = vec![128u8; (width * height * 3) as usize];
        let mut out = Vec::new();
        let color = ExtendedColorType::Rgb8;
        match kind {
            ImageKind::Png => image::codecs::png::PngEncoder::new(&mut out)
                .write_image(&pixels, width, height, color),
            ImageKind::Jpeg => image::codecs::jpeg::JpegEncoder::new(&mut out)
                .write_image(&pixels, width, height, color),
            ImageKind::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .write_image(&pixels, width, height, color),
            ImageKind::Gif => {
                let rgba = vec![128u8; (width * height * 4) as usize];
                image::codecs::gif::GifEncoder::new(&mut out).encode(
                    &rgba,
                    width,
                    height,
                    ExtendedColorType::Rgba8,
                )
            }
        }
        .expect("encode sample image");
        out
    }

    pub fn png(width: u32, height: u32) -> Vec<u8> {
        encode(ImageKind::Png, width, height)
    }
}

#[cfg(test)]
mod tests {
    use super::samples::encode;
    use super::*;

    const ALL: [ImageKind; 4] = [
        ImageKind::Png,
        ImageKind::Jpeg,
        ImageKind::Webp,
        ImageKind::Gif,
    ];

    #[test]
    fn every_format_is_sniffed_and_measured() {
        for kind in ALL {
            let bytes = encode(kind, 7, 3);
            assert_eq!(inspect(&bytes, 4096).unwrap(), (kind, 7, 3), "{kind:?}");
        }
    }

    #[test]
    fn a_side_over_the_limit_is_refused_from_the_header() {
        for kind in ALL {
            let bytes = encode(kind, 4097, 1);
            let err = inspect(&bytes, 4096).unwrap_err();
            assert!(
                matches!(
                    err,
                    MediaError::BadDimensions {
                        width: 4097,
                        height: 1,
                        limit: 4096
                    }
                ),
                "{kind:?}: {err}"
            );
            assert!(err.to_string().contains("4097x1"), "{err}");
        }
    }

    #[test]
    fn a_hand_made_png_header_is_enough_to_refuse() {
        // Signature and IHDR claiming 5000x10, no pixel data at all: refused on the header.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(5000u32.to_be_bytes());
        ihdr.extend(10u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        png.extend((13u32).to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc32(&ihdr).to_be_bytes());
        // An empty IDAT: the decoder reads the header chunks up to the first IDAT.
        png.extend(0u32.to_be_bytes());
        png.extend(b"IDAT");
        png.extend(crc32(b"IDAT").to_be_bytes());
        let err = inspect(&png, 4096).unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::BadDimensions {
                    width: 5000,
                    height: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn claimed_formats_do_not_count_only_magic_bytes() {
        assert!(matches!(
            inspect(b"<html>not an image</html>", 4096),
            Err(MediaError::NotAnImage)
        ));
        assert!(matches!(inspect(b"", 4096), Err(MediaError::NotAnImage)));
        // SVG is text, not one of the four formats.
        assert!(matches!(
            inspect(b"<svg xmlns='http://www.w3.org/2000/svg'/>", 4096),
            Err(MediaError::NotAnImage)
        ));
    }

    #[test]
    fn truncated_headers_are_refused() {
        for kind in ALL {
            let bytes = encode(kind, 7, 3);
            // Magic bytes intact, header cut short.
            let cut = &bytes[..12.min(bytes.len())];
            let err = inspect(cut, 4096).unwrap_err();
            assert!(
                matches!(err, MediaError::BadHeader { .. }),
                "{kind:?}: {err}"
            );
        }
    }

    /// PNG's CRC-32 (ISO-HDLC), so the hand-made chunk is well formed.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &byte in data {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
