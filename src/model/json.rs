//! JSON for `model.json` and fusion objects, parsed strictly: an object
//! that names a key twice is refused, naming it (serde_json keeps the last
//! value silently, so `"name": "prod", "name": "canary"` or a fusion weight
//! given twice would otherwise pass unnoticed).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Parses `json` (the bytes of what `what` names, e.g. `model.json`); a
/// key given twice in one object is [`Error::Bundle`] at that key's path
/// (`cross.inputs[2].transform`; `root` prefixes it, e.g. `fusion`).
pub(crate) fn parse(json: &[u8], what: &str, root: &str) -> Result<Value> {
    // A UTF-8 byte order mark (as some Windows editors write) is not JSON;
    // it says nothing, so it is skipped rather than refused.
    let json = json.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(json);
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let parsed = Strict {
        path: root.to_string(),
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|_| v));
    match (parsed, duplicate.into_inner()) {
        (_, Some(path)) => Err(Error::Bundle {
            field: path,
            what: "is given twice (each key of an object is given once)".into(),
        }),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(Error::Bundle {
            field: what.into(),
            what: format!("is not valid JSON: {e}"),
        }),
    }
}

/// A value at `path`, built as serde_json's own `Value` would be.
struct Strict<'a> {
    path: String,
    /// Set to the first duplicated key's path.
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            path: format!("{}[{}]", self.path, out.len()),
            duplicate: self.duplicate,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key.clone()) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(A::Error::custom("a key given twice"));
            }
            let v = map.next_value_seed(Strict {
                path,
                duplicate: self.duplicate,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::error::Error;

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let v = parse(b"\xEF\xBB\xBF{\"a\": 1}", "model.json", "").unwrap();
        assert_eq!(v["a"], 1);
        // Only at the start: elsewhere it is not JSON.
        assert!(parse(b"{\"a\": 1}\xEF\xBB\xBF", "model.json", "").is_err());
    }

    #[test]
    fn duplicate_keys_are_refused_at_their_path() {
        let field = |json: &str| match parse(json.as_bytes(), "model.json", "") {
            Err(Error::Bundle { field, what }) => {
                assert!(what.contains("given twice"), "{what}");
                field
            }
            other => panic!("{json}: {other:?}"),
        };
        assert_eq!(field(r#"{"name": "a", "name": "b"}"#), "name");
        assert_eq!(
            field(r#"{"fusion": {"weights": {"a": 1, "b": 2, "a": 0}}}"#),
            "fusion.weights.a"
        );
        assert_eq!(
            field(r#"{"cross": {"inputs": [{"x": 1}, {"t": 1, "t": 2}]}}"#),
            "cross.inputs[1].t"
        );
        match parse(br#"{"kind": "rank", "kind": "rank"}"#, "fusion", "fusion") {
            Err(Error::Bundle { field, .. }) => assert_eq!(field, "fusion.kind"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let text = r#"{"a": [1, -2, 3.5, 1e300, true, null, "s", {"b": []}], "c": {}}"#;
        let want: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse(text.as_bytes(), "x", "").unwrap(), want);
        match parse(b"{\"a\": 1} trailing", "model.json", "") {
            Err(Error::Bundle { field, what }) => {
                assert_eq!(field, "model.json");
                assert!(what.contains("is not valid JSON"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(b"[1, 2", "x", "").is_err());
    }
}
