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
            escape(action, &mut out);
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

/// Appends `text` escaped for XML text and attribute values. Characters XML 1.0 forbids become
/// U+FFFD, and `\r` is written as `&#13;` so parsers do not normalise it away (DESIGN.md §9).
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
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
