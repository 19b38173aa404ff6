//! TwiML for arbitrary replies: always well-formed, and a parser reads back every text with
//! only the characters XML forbids replaced (DESIGN.md §9).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use twilio_receiver::twiml::{Message, render};

#[derive(Debug, Arbitrary)]
struct Reply {
    body: String,
    media: Vec<String>,
    action: Option<String>,
}

fn replaced(text: &str) -> String {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}'
    };
    text.chars()
        .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
        .collect()
}

fn content(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants()
        .filter_map(|n| n.is_text().then(|| n.text()).flatten())
        .collect()
}

fuzz_target!(|replies: Vec<Reply>| {
    let messages: Vec<Message> = replies
        .into_iter()
        .map(|r| Message {
            body: r.body,
            media: r.media,
            action: r.action,
        })
        .collect();
    let xml = render(&messages);
    let doc = roxmltree::Document::parse(&xml).expect("rendered TwiML is well-formed XML");
    let read: Vec<_> = doc
        .root_element()
        .children()
        .filter(|n| n.is_element())
        .collect();
    assert_eq!(read.len(), messages.len());
    for (node, m) in read.iter().zip(&messages) {
        assert_eq!(
            node.attribute("action"),
            m.action.as_deref().map(replaced).as_deref()
        );
        let mut children = node.children().filter(|n| n.is_element());
        let body = children.next().expect("a <Body>");
        assert_eq!(content(body), replaced(&m.body));
        let media: Vec<String> = children.map(content).collect();
        let expected: Vec<String> = m.media.iter().map(|u| replaced(u)).collect();
        assert_eq!(media, expected);
    }
});
