//! The parameters of a webhook, exactly as received (order, blanks and repeats kept).

use serde_json::{Map, Value};

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

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A JSON object of every parameter; a repeated name becomes an array of its values in
    /// the order received, so nothing Twilio sent is lost.
    pub fn to_json(&self) -> Value {
        let mut map = Map::with_capacity(self.0.len());
        for (k, v) in &self.0 {
            match map.get_mut(k) {
                None => {
                    map.insert(k.clone(), Value::String(v.clone()));
                }
                Some(Value::Array(values)) => values.push(Value::String(v.clone())),
                Some(first) => {
                    let first = first.take();
                    map.insert(
                        k.clone(),
                        Value::Array(vec![first, Value::String(v.clone())]),
                    );
                }
            }
        }
        Value::Object(map)
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
    use serde_json::json;

    #[test]
    fn json_keeps_blanks_and_turns_repeats_into_arrays() {
        let p = Params::of(&[("A", "1"), ("Empty", ""), ("A", "2"), ("A", "1")]);
        assert_eq!(p.to_json(), json!({"A": ["1", "2", "1"], "Empty": ""}));
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
            let json = Params::new(pairs.clone()).to_json();
            let object = json.as_object().unwrap();
            let mut names: Vec<String> = pairs.iter().map(|(k, _)| scrub(k)).collect();
            names.sort();
            names.dedup();
            prop_assert_eq!(object.len(), names.len());
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
