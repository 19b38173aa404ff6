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
    // `limit` is the byte offset just past the `max`-th character, while `rest` has more.
    // Looking no further than that keeps splitting linear; counting all of `rest` for every
    // part was quadratic in the body's length.
    while let Some((limit, _)) = rest.char_indices().nth(max) {
        let window = &rest[..limit];
        // Break where the window ends at a space, else after the last whitespace inside the
        // window, else cut the word.
        let cut = rest[limit..]
            .starts_with(char::is_whitespace)
            .then_some(limit)
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
            write_escaped(action, true, &mut out);
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

/// [`escape`]; for an `attribute` value, tabs and newlines are written as references too,
/// since parsers turn a literal one into a space there (attribute-value normalisation).
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
    fn a_multi_megabyte_body_splits_quickly() {
        // Regression (fuzz target rule_templates): splitting counted the whole rest of the body
        // for every part, quadratic in its length.
        let body = "ab ".repeat(1_000_000);
        let parts = split_body(&body);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_BODY_CHARS));
        // Compared without assert_eq!, which would print megabytes.
        assert!(parts.join(" ") == body);
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

/// Property tests: whatever text goes in, a conforming XML parser reads back that text with
/// only DESIGN.md §9's replacement applied.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Any character, with the ones the writer treats specially (markup, controls, NUL, CR, the
    /// non-characters U+FFFE and U+FFFF, Unicode whitespace) common enough to meet every run.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '\0',
                '\u{1}',
                '\u{8}',
                '\u{b}',
                '\u{c}',
                '\u{1f}',
                '\t',
                '\n',
                '\r',
                ' ',
                '&',
                '<',
                '>',
                '"',
                '\'',
                ';',
                '#',
                ']',
                '\u{7f}',
                '\u{85}',
                '\u{a0}',
                '\u{2028}',
                '\u{3000}',
                '\u{d7ff}',
                '\u{e000}',
                '\u{fffd}',
                '\u{fffe}',
                '\u{ffff}',
                '\u{10000}',
                '\u{10ffff}',
                'a',
                'ñ',
                '🎉',
            ]),
        ]
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(tricky_char(), 0..max).prop_map(String::from_iter)
    }

    /// XML 1.0's `Char` production (surrogates cannot occur in a Rust string).
    fn xml_char(c: char) -> bool {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}'
    }

    /// What a reader must get back for `text`: every character XML forbids as U+FFFD.
    fn replaced(text: &str) -> String {
        text.chars()
            .map(|c| if xml_char(c) { c } else { '\u{FFFD}' })
            .collect()
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            text(48),
            prop::collection::vec(text(16), 0..3),
            prop::option::of(text(16)),
        )
            .prop_map(|(body, media, action)| Message {
                body,
                media,
                action,
            })
    }

    /// The text content of an element, whatever text nodes the parser split it into.
    fn content(node: roxmltree::Node<'_, '_>) -> String {
        node.descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect()
    }

    /// The child elements of `node` named `name`.
    fn elements<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Vec<roxmltree::Node<'a, 'i>> {
        node.children()
            .filter(|c| c.is_element() && c.has_tag_name(name))
            .collect()
    }

    /// The messages a parser reads back from a rendered document.
    fn read_back(xml: &str) -> Result<Vec<Message>, TestCaseError> {
        let doc = roxmltree::Document::parse(xml)
            .map_err(|e| TestCaseError::fail(format!("{e}: {xml:?}")))?;
        let root = doc.root_element();
        prop_assert!(
            root.has_tag_name("Response"),
            "root is {:?}",
            root.tag_name()
        );
        Ok(elements(root, "Message")
            .into_iter()
            .map(|m| Message {
                body: elements(m, "Body")
                    .first()
                    .map(|b| content(*b))
                    .unwrap_or_default(),
                media: elements(m, "Media").into_iter().map(content).collect(),
                action: m.attribute("action").map(str::to_owned),
            })
            .collect())
    }

    proptest! {
        #[test]
        fn any_text_reads_back_with_only_forbidden_characters_replaced(
            messages in prop::collection::vec(message(), 0..4),
        ) {
            let expected: Vec<Message> = messages
                .iter()
                .map(|m| Message {
                    body: replaced(&m.body),
                    media: m.media.iter().map(|u| replaced(u)).collect(),
                    action: m.action.as_deref().map(replaced),
                })
                .collect();
            prop_assert_eq!(read_back(&render(&messages))?, expected);
        }

        /// Splitting drops only whitespace at the cuts: the parts, in order, are the body.
        #[test]
        fn split_parts_fit_and_keep_every_other_character(body in text(96), max in 1usize..24) {
            let parts = split_at(&body, max);
            prop_assert!(!parts.is_empty());
            if body.chars().count() <= max {
                prop_assert_eq!(&parts, &vec![body.clone()]);
            }
            // A body over the limit loses its leading whitespace too.
            let split = body.chars().count() > max;
            let mut rest = body.as_str();
            for part in &parts {
                prop_assert!(part.chars().count() <= max, "{:?} is over {}", part, max);
                rest = if split { rest.trim_start() } else { rest };
                prop_assert!(rest.starts_with(part.as_str()), "{:?} does not start {:?}", part, rest);
                rest = &rest[part.len()..];
            }
            prop_assert!(rest.trim().is_empty(), "{:?} was lost", rest);
        }

        /// A long body, split and rendered, reads back as its parts.
        #[test]
        fn split_long_bodies_render_and_read_back(
            word in text(24),
            repeats in 1usize..300,
        ) {
            let body = vec![word; repeats].join(" ");
            let parts = split_body(&body);
            let messages: Vec<Message> = parts.iter().cloned().map(Message::text).collect();
            let bodies: Vec<String> = read_back(&render(&messages))?
                .into_iter()
                .map(|m| m.body)
                .collect();
            let expected: Vec<String> = parts.iter().map(|p| replaced(p)).collect();
            prop_assert_eq!(bodies, expected);
            prop_assert!(parts.iter().all(|p| p.chars().count() <= MAX_BODY_CHARS));
        }
    }
}
