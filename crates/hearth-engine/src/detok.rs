//! Incremental detokenization: token bytes in, whole UTF-8 characters out.

/// Buffers the bytes of a character split across tokens until it is complete.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

/// The most bytes a UTF-8 character needs; more pending bytes than this cannot become valid.
const MAX_CHAR_BYTES: usize = 4;

impl Utf8Decoder {
    /// Add a token's bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 just told us this prefix is valid.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes will never become valid: replace them, as Python does.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            if self.pending.len() >= MAX_CHAR_BYTES {
                                out.push(char::REPLACEMENT_CHARACTER);
                                self.pending.clear();
                            }
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// The sequence ended: anything left is an incomplete character.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_split_characters_until_complete() {
        let mut d = Utf8Decoder::default();
        let bytes = "a😀b".as_bytes();
        assert_eq!(d.push(&bytes[..2]), "a");
        assert_eq!(d.push(&bytes[2..4]), "");
        assert_eq!(d.push(&bytes[4..]), "😀b");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn replaces_invalid_bytes() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
        assert_eq!(d.push(&[0xe4, 0xb8]), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
