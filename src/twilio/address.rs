//! Addresses as Twilio writes them: `whatsapp:+E164`, plain E.164 for SMS, short codes,
//! alphanumeric senders, `whatsapp:ID.…` user IDs and other channels' `prefix:…` forms.

use std::fmt;

/// An address and the channel it belongs to. Parsing never fails: any form Twilio uses is
/// kept exactly as given, so it can be stored and compared.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    raw: String,
    /// Length of the `channel:` prefix, 0 for SMS addresses that carry none.
    prefix_len: usize,
}

impl Address {
    pub fn parse(raw: &str) -> Self {
        // A channel prefix is a run of letters followed by ':' ("whatsapp:", "messenger:").
        let prefix_len = raw
            .find(':')
            .filter(|&i| i > 0 && raw[..i].bytes().all(|b| b.is_ascii_alphabetic()))
            .map_or(0, |i| i + 1);
        Address {
            raw: raw.to_owned(),
            prefix_len,
        }
    }

    /// `whatsapp`, `sms` (no prefix), or the prefix of any other channel, lower-cased.
    pub fn channel(&self) -> String {
        if self.prefix_len == 0 {
            "sms".to_owned()
        } else {
            self.raw[..self.prefix_len - 1].to_ascii_lowercase()
        }
    }

    /// The address without its channel prefix (`+14155238886`).
    pub fn id(&self) -> &str {
        &self.raw[self.prefix_len..]
    }

    /// The E.164 number, when the address is one (`+` and 7 to 15 digits).
    pub fn e164(&self) -> Option<&str> {
        let id = self.id();
        let digits = id.strip_prefix('+')?;
        ((7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
            .then_some(id)
    }

    /// The full address, for storage. Deliberately not `Display`: logs get the masked form.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

/// Masks all but the last four characters of the id, so an address in a log line does not
/// identify a person.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id();
        let keep = id.chars().count().saturating_sub(4);
        f.write_str(&self.raw[..self.prefix_len])?;
        for (i, c) in id.chars().enumerate() {
            if i < keep && c.is_alphanumeric() {
                f.write_str("*")?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_come_from_the_prefix() {
        let cases = [
            (
                "whatsapp:+14155238886",
                "whatsapp",
                "+14155238886",
                Some("+14155238886"),
            ),
            (
                "WhatsApp:+14155238886",
                "whatsapp",
                "+14155238886",
                Some("+14155238886"),
            ),
            ("+14155238886", "sms", "+14155238886", Some("+14155238886")),
            ("12345", "sms", "12345", None),
            ("ACME", "sms", "ACME", None),
            ("messenger:1234567890", "messenger", "1234567890", None),
            (
                "whatsapp:ID.4566546130240823",
                "whatsapp",
                "ID.4566546130240823",
                None,
            ),
            (":odd", "sms", ":odd", None),
            ("a1:b", "sms", "a1:b", None),
        ];
        for (raw, channel, id, e164) in cases {
            let a = Address::parse(raw);
            assert_eq!(a.channel(), channel, "{raw}");
            assert_eq!(a.id(), id, "{raw}");
            assert_eq!(a.e164(), e164, "{raw}");
            assert_eq!(a.expose(), raw);
        }
    }

    #[test]
    fn display_masks_all_but_the_last_four() {
        assert_eq!(
            Address::parse("whatsapp:+15551234567").to_string(),
            "whatsapp:+*******4567"
        );
        assert_eq!(Address::parse("ACME").to_string(), "ACME");
        assert_eq!(
            format!("{:?}", Address::parse("+15551234567")),
            "Address(+*******4567)"
        );
    }
}

/// Property tests: any text is an address, kept exactly, and masking never panics.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_is_kept_and_splits_into_prefix_and_id(
            raw in prop_oneof![
                "[a-zA-Z]{0,9}:[+]?[0-9]{0,16}",
                "(whatsapp|WhatsApp|messenger):ID\\.[0-9]{1,20}",
                any::<String>(),
            ],
        ) {
            let a = Address::parse(&raw);
            prop_assert_eq!(a.expose(), raw.as_str());
            prop_assert!(raw.ends_with(a.id()));
            let prefix = &raw[..raw.len() - a.id().len()];
            if prefix.is_empty() {
                prop_assert_eq!(a.channel(), "sms");
            } else {
                prop_assert_eq!(format!("{}:", a.channel()), prefix.to_ascii_lowercase());
            }
            if let Some(number) = a.e164() {
                prop_assert!(number.starts_with('+') && number.len() >= 8);
            }
            // The masked form keeps the prefix and the length in characters.
            let masked = a.to_string();
            prop_assert_eq!(masked.chars().count(), raw.chars().count());
            prop_assert!(masked.starts_with(prefix));
        }
    }
}
