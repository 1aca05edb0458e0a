//! Duplicate keys in the config's JSON. A JSON object with a key twice is
//! legal to most parsers, which keep the last value without a word: an
//! operator who pasted a second `"restart"` block below the first would run
//! a config other than the one they read. So the text is walked once more,
//! and every repeated key is a problem at its JSON path.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Problem;

/// The repeated keys in the JSON `text`, each at its JSON path. Call it on
/// text that parsed: on text that does not, it stops at the error.
pub(super) fn duplicate_keys(text: &[u8]) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(text);
    let _ = Walk {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// Walks one JSON value at `path`, recording repeated keys in `found`.
struct Walk<'a> {
    path: String,
    found: &'a mut Vec<Problem>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let item = Walk {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
            };
            if seq.next_element_seed(item)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !keys.insert(key) {
                self.found.push(Problem {
                    path: path.clone(),
                    message: "duplicate key (only the last would count)".into(),
                });
            }
            map.next_value_seed(Walk {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_keys;

    fn paths(text: &str) -> Vec<String> {
        duplicate_keys(text.as_bytes())
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn repeated_keys_are_found_at_every_depth() {
        assert!(paths(r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}"#).is_empty());
        assert_eq!(paths(r#"{"a":1,"a":2}"#), ["a"]);
        assert_eq!(
            paths(
                r#"{"agents":[{"id":"x"},{"id":"y","restart":{"policy":"never","policy":"always"},"id":"z"}]}"#
            ),
            ["agents[1].restart.policy", "agents[1].id"]
        );
        // Escapes are compared decoded: "\u0061" is "a".
        assert_eq!(paths(r#"{"a":1,"\u0061":2}"#), ["a"]);
    }
}
