//! `data:[<media type>][;params];base64,<data>` URLs, as OpenAI clients send inline images.
//!
//! Only base64 payloads are accepted (percent-encoded binary is legal but no client sends
//! images that way). The declared media type may be missing or empty (the bytes are sniffed
//! anyway), but one that names something other than an image is refused, as over HTTP.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

use super::MediaError;

/// Standard alphabet; padding optional, since some encoders drop it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The bytes of a base64 data URL, at most `max_bytes` of them.
pub fn decode(url: &str, max_bytes: usize) -> Result<Vec<u8>, MediaError> {
    // The caller matched the scheme case-insensitively; "data:" is 5 bytes in any case.
    let rest = &url[5..];
    let (meta, payload) = rest
        .split_once(',')
        .ok_or(MediaError::BadDataUrl("it has no ',' before the data"))?;
    let mut params = meta.split(';').map(str::trim);
    let media_type = params.next().unwrap_or("");
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(MediaError::BadDataUrl(
            "only base64 data URLs are supported",
        ));
    }
    if !acceptable_media_type(media_type) {
        return Err(MediaError::BadDataUrl(
            "its media type is not an image type (image/png, image/jpeg, image/webp or image/gif)",
        ));
    }

    // Bound memory before decoding: every 4 base64 characters give at most 3 bytes, so a
    // payload of more than 4 * ceil(max / 3) characters cannot fit. Whitespace (line-wrapped
    // base64) does not count.
    let encoded_len = payload.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    if encoded_len > max_bytes.div_ceil(3).saturating_mul(4) {
        return Err(MediaError::TooLarge { limit: max_bytes });
    }
    let compact: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let bytes = LENIENT
        .decode(&compact)
        .map_err(|_| MediaError::BadDataUrl("its data is not valid base64"))?;
    if bytes.len() > max_bytes {
        return Err(MediaError::TooLarge { limit: max_bytes });
    }
    if bytes.is_empty() {
        return Err(MediaError::BadDataUrl("it holds no data"));
    }
    Ok(bytes)
}

/// Missing, an `image/*` type, or the generic binary type.
fn acceptable_media_type(media_type: &str) -> bool {
    let lower = media_type.to_ascii_lowercase();
    lower.is_empty() || lower.starts_with("image/") || lower == "application/octet-stream"
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn decodes_plain_wrapped_and_untyped_payloads() {
        let data = b"\x89PNG\r\n\x1a\nrest";
        let b64 = STANDARD.encode(data);
        assert_eq!(
            decode(&format!("data:image/png;base64,{b64}"), 100).unwrap(),
            data
        );
        assert_eq!(decode(&format!("data:;base64,{b64}"), 100).unwrap(), data);
        assert_eq!(
            decode(&format!("DATA:IMAGE/PNG;charset=x;BASE64,{b64}"), 100).unwrap(),
            data
        );
        let wrapped = format!("{}\n {}\r\n\t{}", &b64[..4], &b64[4..8], &b64[8..]);
        assert_eq!(
            decode(&format!("data:image/png;base64,{wrapped}"), 100).unwrap(),
            data
        );
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(
            decode(&format!("data:image/png;base64,{unpadded}"), 100).unwrap(),
            data
        );
    }

    #[test]
    fn refuses_malformed_urls() {
        for bad in [
            "data:image/png;base64",
            "data:image/png,rawbytes",
            "data:image/png;base64,!!!!",
            "data:image/png;base64,",
            "data:text/html;base64,PGh0bWw+",
        ] {
            assert!(
                matches!(decode(bad, 100), Err(MediaError::BadDataUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_oversized_payloads_before_and_after_decoding() {
        // 13 characters can never fit in 9 bytes: refused without decoding.
        let err = decode("data:;base64,AAAAAAAAAAAAA", 9).unwrap_err();
        assert!(matches!(err, MediaError::TooLarge { limit: 9 }), "{err}");
        // 12 characters pass the bound but decode to 9 bytes, over a limit of 8.
        let err = decode("data:;base64,AAAAAAAAAAAA", 8).unwrap_err();
        assert!(matches!(err, MediaError::TooLarge { limit: 8 }), "{err}");
        assert!(err.to_string().contains("8 bytes"));
        assert_eq!(decode("data:;base64,AAAAAAAAAAAA", 9).unwrap().len(), 9);
    }
}
