//! The parameters of a webhook, exactly as received (order, blanks and repeats kept).

use super::MissingParam;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::value::RawValue;

/// Every parameter of a request, in the order received. Only [`super::verify`] builds one
/// from a request, so holding a `Params` means the request passed verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Wraps already-verified pairs. NUL cannot be stored by Postgres (text or jsonb), so it
    /// becomes U+FFFD here, after the signature was checked on the raw bytes (DESIGN.md §9).
    pub(crate) fn new(mut pairs: Vec<(String, String)>) -> Self {
        for (k, v) in &mut pairs {
            for s in [k, v] {
                if s.contains('\0') {
                    *s = s.replace('\0', "\u{FFFD}");
                }
            }
        }
        Params(pairs)
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` when present and not blank.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    /// [`Params::non_empty`], owned.
    pub fn text(&self, name: &str) -> Option<String> {
        self.non_empty(name).map(str::to_owned)
    }

    /// [`Params::text`] for a parameter without which a webhook is refused.
    pub fn required(&self, name: &'static str) -> Result<String, MissingParam> {
        self.text(name).ok_or(MissingParam(name))
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every parameter as a JSON object (see the `Serialize` impl), as the text the `params`
    /// jsonb column takes: written straight from the pairs, with no `serde_json::Value` tree
    /// in between.
    pub fn to_json(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(self).expect("string pairs always serialize")
    }
}

/// A JSON object of every parameter; a repeated name becomes an array of its values in the
/// order received, so nothing Twilio sent is lost.
impl Serialize for Params {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Pairs grouped by name, each group in the order received (a stable sort); names
        // are rarely repeated, but a JSON object must name each key once.
        let mut order: Vec<usize> = (0..self.0.len()).collect();
        order.sort_by(|&a, &b| self.0[a].0.cmp(&self.0[b].0));
        let groups: Vec<&[usize]> = order
            .chunk_by(|&a, &b| self.0[a].0 == self.0[b].0)
            .collect();
        let mut map = serializer.serialize_map(Some(groups.len()))?;
        for group in groups {
            let name = &self.0[group[0]].0;
            match group {
                [one] => map.serialize_entry(name, &self.0[*one].1)?,
                many => map.serialize_entry(name, &Values(self, many))?,
            }
        }
        map.end()
    }
}

/// The values of one repeated name, as a JSON array.
struct Values<'a>(&'a Params, &'a [usize]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.1.iter().map(|&i| &(self.0).0[i].1))
    }
}

#[cfg(test)]
impl Params {
    /// Test shorthand: `Params::of(&[("Body", "hi")])`.
    pub(crate) fn of(pairs: &[(&str, &str)]) -> Self {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}

impl FromIterator<(String, String)> for Params {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Params::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn json_keeps_blanks_and_turns_repeats_into_arrays() {
        let p = Params::of(&[("A", "1"), ("Empty", ""), ("A", "2"), ("A", "1")]);
        let json: Value = serde_json::from_str(p.to_json().get()).unwrap();
        assert_eq!(json, json!({"A": ["1", "2", "1"], "Empty": ""}));
    }

    #[test]
    fn json_escapes_what_json_must() {
        let p = Params::of(&[("Body", "\"q\" \\ \n \u{1} é")]);
        assert_eq!(p.to_json().get(), r#"{"Body":"\"q\" \\ \n \u0001 é"}"#);
    }

    #[test]
    fn nul_becomes_the_replacement_character() {
        let p = Params::of(&[("Body", "a\0b"), ("N\0", "x")]);
        assert_eq!(p.get("Body"), Some("a\u{FFFD}b"));
        assert_eq!(p.get("N\u{FFFD}"), Some("x"));
    }

    #[test]
    fn get_returns_the_first_value_and_non_empty_skips_blanks() {
        let p = Params::of(&[("To", ""), ("To", "+1"), ("From", "  ")]);
        assert_eq!(p.get("To"), Some(""));
        assert_eq!(p.non_empty("To"), None);
        assert_eq!(p.non_empty("From"), None);
        assert_eq!(p.get("Missing"), None);
    }
}

/// Property tests: nothing Twilio sent is lost on the way to storage.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// A JSON object's entries as written, so a name written twice would show.
    struct Entries(Vec<(String, Value)>);

    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Entries, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        entries.push(entry);
                    }
                    Ok(Entries(entries))
                }
            }
            d.deserialize_map(Visitor)
        }
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop_oneof![
            prop::sample::select(vec!["Body", "To", ""]).prop_map(str::to_owned),
            any::<String>(),
        ];
        let value = prop_oneof![Just(String::new()), Just("\0".to_owned()), any::<String>()];
        prop::collection::vec((name, value), 0..8)
    }

    proptest! {
        /// Each name maps to its values in the order received: a string for one, an array
        /// for several; NUL is the only character changed (DESIGN.md §9).
        #[test]
        fn json_keeps_every_value_in_order(pairs in pairs()) {
            let scrub = |s: &str| s.replace('\0', "\u{FFFD}");
            let text = Params::new(pairs.clone()).to_json();
            let Entries(entries) = serde_json::from_str(text.get()).unwrap();
            let mut names: Vec<String> = pairs.iter().map(|(k, _)| scrub(k)).collect();
            names.sort();
            names.dedup();
            // Each name once (jsonb would keep only the last of a repeated key).
            prop_assert_eq!(entries.len(), names.len());
            let object: serde_json::Map<String, Value> = entries.into_iter().collect();
            for name in names {
                let values: Vec<Value> = pairs
                    .iter()
                    .filter(|(k, _)| scrub(k) == name)
                    .map(|(_, v)| Value::String(scrub(v)))
                    .collect();
                let expected = match values.as_slice() {
                    [one] => one.clone(),
                    _ => Value::Array(values),
                };
                prop_assert_eq!(&object[&name], &expected);
            }
        }
    }
}
