//! The form (`application/x-www-form-urlencoded`) parser of the hot path: every webhook body
//! goes through it before its signature is checked.
//!
//! It gives exactly the pairs `serde_urlencoded` gives (a property test below holds the two
//! together on arbitrary bytes): pairs split on `&`, empty pieces skipped, the name ending at
//! the first `=`, `+` as a space, `%XX` as a byte (a `%` without two hex digits kept as it
//! is), then UTF-8 with invalid sequences as U+FFFD; blanks and repeats kept (TWILIO.md §1.1).
//! It exists because the crate decodes each value in three passes, each with its own copy
//! (plus signs, percent escapes, UTF-8), on the hottest path there is; this does one pass
//! and one copy.

/// Every pair of a form body, in order.
pub fn pairs(body: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(body.iter().filter(|&&b| b == b'&').count() + 1);
    for piece in body.split(|&b| b == b'&').filter(|piece| !piece.is_empty()) {
        let (name, value) = match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (&piece[..eq], &piece[eq + 1..]),
            None => (piece, &[][..]),
        };
        pairs.push((decode(name), decode(value)));
    }
    pairs
}

fn decode(encoded: &[u8]) -> String {
    let bytes = if encoded.iter().any(|&b| b == b'+' || b == b'%') {
        let mut bytes = Vec::with_capacity(encoded.len());
        let mut i = 0;
        while i < encoded.len() {
            let byte = match encoded[i] {
                b'+' => b' ',
                b'%' => match (hex(encoded.get(i + 1)), hex(encoded.get(i + 2))) {
                    (Some(high), Some(low)) => {
                        i += 2;
                        high << 4 | low
                    }
                    _ => b'%',
                },
                other => other,
            };
            bytes.push(byte);
            i += 1;
        }
        bytes
    } else {
        encoded.to_vec()
    };
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

fn hex(digit: Option<&u8>) -> Option<u8> {
    digit
        .and_then(|&d| char::from(d).to_digit(16))
        .map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::Params;
    use proptest::prelude::*;

    #[test]
    fn decodes_plus_percent_and_keeps_blanks_and_repeats() {
        assert_eq!(
            pairs(b"From=whatsapp%3A%2B14155238886&Body=hi+there&ToCity=&A=1&A=2"),
            Params::of(&[
                ("From", "whatsapp:+14155238886"),
                ("Body", "hi there"),
                ("ToCity", ""),
                ("A", "1"),
                ("A", "2"),
            ])
            .pairs()
        );
    }

    #[test]
    fn odd_pieces_parse_as_the_crate_parses_them() {
        assert_eq!(
            pairs(b"&&x&=v&k=a=b&%zz=%4&p=%2b%2B+%C3%A9&bad=%FF"),
            Params::of(&[
                ("x", ""),
                ("", "v"),
                ("k", "a=b"),
                ("%zz", "%4"),
                ("p", "++ é"),
                ("bad", "\u{FFFD}"),
            ])
            .pairs()
        );
    }

    /// Bytes that exercise the grammar: separators, escapes, hex digits, invalid UTF-8.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            prop::sample::select(b"&=+%0aAfFgG9 ".to_vec()),
            prop::sample::select(vec![0xC3u8, 0xA9, 0xFF, 0x80, 0xE2]),
            any::<u8>(),
        ];
        prop::collection::vec(byte, 0..64)
    }

    proptest! {
        /// The same pairs as serde_urlencoded, whatever the bytes.
        #[test]
        fn matches_serde_urlencoded(body in body()) {
            let expected: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap();
            prop_assert_eq!(pairs(&body), expected);
        }
    }
}
