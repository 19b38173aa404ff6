//! TwiML for Messaging (TWILIO.md §7): the `<Response>` an inbound webhook answers with.
//!
//! The documents are tiny and have one shape, so they are written directly; every piece of
//! text goes through [`escape`], and nothing else formats text into markup.

/// The content type of every TwiML answer.
pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// An empty answer: Twilio sends nothing back to the user.
pub const EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// One `<Message>` of a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub body: String,
    /// `<Media>` URLs. WhatsApp delivers one media item per message.
    pub media: Vec<String>,
    /// Where Twilio sends status callbacks for this reply (`action`).
    pub action: Option<String>,
}

impl Message {
    pub fn text(body: impl Into<String>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }
}

/// The most characters Twilio accepts in one `<Body>` (TWILIO.md §7).
pub const MAX_BODY_CHARS: usize = 1600;

/// The most bytes a TwiML document may have (Twilio error 11750).
pub const MAX_DOCUMENT_BYTES: usize = 64_000;

/// Splits a body longer than [`MAX_BODY_CHARS`] (counted in Unicode characters) into parts at
/// word boundaries; a single word longer than the limit is cut. Always at least one part.
pub fn split_body(body: &str) -> Vec<String> {
    split_at(body, MAX_BODY_CHARS)
}

fn split_at(body: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    if body.chars().count() <= max {
        return vec![body.to_owned()];
    }
    let mut rest = body.trim_start();
    while rest.chars().count() > max {
        // Byte offset just past the `max`-th character.
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..limit];
        // Break where the window ends at a space, else after the last whitespace inside the
        // window, else cut the word.
        let ends_at_space = rest[limit..].starts_with(char::is_whitespace);
        let cut = if ends_at_space { Some(limit) } else { None };
        let cut = cut
            .or_else(|| {
                window
                    .char_indices()
                    .rev()
                    .find(|(_, c)| c.is_whitespace())
                    .map(|(i, c)| i + c.len_utf8())
                    .filter(|&i| window[..i].trim_end().chars().count() > 0)
            })
            .unwrap_or(limit);
        parts.push(rest[..cut].trim_end().to_owned());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

/// Renders a `<Response>` holding `messages` (an empty `<Response/>` when there are none).
pub fn render(messages: &[Message]) -> String {
    if messages.is_empty() {
        return EMPTY.to_owned();
    }
    let mut out = String::with_capacity(
        96 + messages
            .iter()
            .map(|m| 64 + m.body.len() + m.media.iter().map(|u| u.len() + 16).sum::<usize>())
            .sum::<usize>(),
    );
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#);
    for m in messages {
        out.push_str("<Message");
        if let Some(action) = &m.action {
            out.push_str(r#" action=""#);
            escape_attribute(action, &mut out);
            out.push_str(r#"" method="POST""#);
        }
        out.push_str("><Body>");
        escape(&m.body, &mut out);
        out.push_str("</Body>");
        for url in &m.media {
            out.push_str("<Media>");
            escape(url, &mut out);
            out.push_str("</Media>");
        }
        out.push_str("</Message>");
    }
    out.push_str("</Response>");
    out
}

/// Appends `text` escaped for XML text. Characters XML 1.0 forbids become U+FFFD, and `\r` is
/// written as `&#13;` so parsers do not normalise it away (DESIGN.md §9).
pub fn escape(text: &str, out: &mut String) {
    write_escaped(text, false, out);
}

/// [`escape`] for an attribute value, where parsers also turn a literal tab or newline into a
/// space (attribute-value normalisation), so those are written as references too.
fn escape_attribute(text: &str, out: &mut String) {
    write_escaped(text, true, out);
}

fn write_escaped(text: &str, attribute: bool, out: &mut String) {
    for c in text.chars() {
        match c {
            '\t' if attribute => out.push_str("&#9;"),
            '\n' if attribute => out.push_str("&#10;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_split_at_word_boundaries_and_long_words_are_cut() {
        assert_eq!(split_at("one two three", 7), ["one two", "three"]);
        assert_eq!(split_at("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(split_at("", 4), [""]);
        assert_eq!(split_at("short", 10), ["short"]);
        // Counted in characters, not bytes.
        assert_eq!(split_at("ñññ ñññ", 3), ["ñññ", "ñññ"]);
        let long = vec!["word"; 400].join(" ");
        let parts = split_body(&long);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_BODY_CHARS));
        assert_eq!(parts.join(" "), long);
    }

    #[test]
    fn no_messages_is_an_empty_response() {
        assert_eq!(
            render(&[]),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
        );
    }

    #[test]
    fn user_text_is_escaped() {
        let m = Message::text(r#"<b>Tom & "Jerry"</b> it's 🎉"#);
        assert_eq!(
            render(&[m]),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message><Body>&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt; it&apos;s 🎉</Body></Message></Response>"#
        );
    }

    #[test]
    fn forbidden_characters_are_replaced_and_cr_is_kept() {
        let mut out = String::new();
        escape("a\0b\u{1}c\r\n\td\u{FFFF}", &mut out);
        assert_eq!(out, "a\u{FFFD}b\u{FFFD}c&#13;\n\td\u{FFFD}");
    }

    #[test]
    fn tabs_and_newlines_in_attributes_are_references() {
        let m = Message {
            action: Some("a\tb\nc\rd".into()),
            ..Message::text("x\ty\n")
        };
        assert!(
            render(&[m])
                .contains("action=\"a&#9;b&#10;c&#13;d\" method=\"POST\"><Body>x\ty\n</Body>")
        );
    }

    #[test]
    fn media_and_action_are_rendered_escaped() {
        let m = Message {
            body: "Hi".into(),
            media: vec!["https://x.example/a.png?x=1&y=2".into()],
            action: Some("https://h.example/twilio/status?reply_to=SM1&rule=greet".into()),
        };
        assert_eq!(
            render(&[m, Message::text("Second")]),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#,
                r#"<Message action="https://h.example/twilio/status?reply_to=SM1&amp;rule=greet" method="POST">"#,
                r#"<Body>Hi</Body><Media>https://x.example/a.png?x=1&amp;y=2</Media></Message>"#,
                r#"<Message><Body>Second</Body></Message></Response>"#
            )
        );
    }
}
