//! Strict JSON for token headers and payloads: a JSON object, no duplicate member names at any
//! depth, bounded nesting, no trailing data.
//!
//! serde_json on its own keeps the last of two members with the same name. Another JWT library
//! may keep the first, so one token could mean two things to two parsers (`{"sub":"alice",
//! "sub":"admin"}`). We build the value through our own visitor that refuses the second one.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::Malformed;

/// Deepest nesting accepted, counting the top-level object as one. A WSO2 token nests three
/// levels (payload → `subscribedAPIs` → entry, payload → `tierInfo` → tier); other identity
/// providers use four or five. Sixteen leaves room and keeps a hostile `[[[[...]]]]` from
/// recursing far.
pub const MAX_DEPTH: usize = 16;

/// Parses `bytes` as a JSON object under the rules above.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Malformed> {
    let refusal = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match (Strict { depth: 0, refusal: &refusal }).deserialize(&mut de) {
        Ok(v) => v,
        Err(_) => return Err(refusal.get().unwrap_or(Malformed::Json)),
    };
    de.end().map_err(|_| Malformed::Json)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Malformed::NotObject),
    }
}

/// One level of the value being built. `refusal` carries the precise reason out of serde's error
/// type, which only holds a message.
#[derive(Clone, Copy)]
struct Strict<'r> {
    depth: usize,
    refusal: &'r Cell<Option<Malformed>>,
}

impl Strict<'_> {
    fn refuse<E: de::Error>(&self, why: Malformed) -> E {
        self.refusal.set(Some(why));
        E::custom("refused by the strict JSON rules")
    }

    fn child<E: de::Error>(&self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(self.refuse(Malformed::TooDeep));
        }
        Ok(Strict { depth: self.depth + 1, refusal: self.refusal })
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json never hands us one, but do not assume it.
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(child)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = self.child()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(self.refuse(Malformed::DuplicateKey));
            }
            let v = map.next_value_seed(child)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_objects() {
        let m = parse_object(br#" {"a":1,"b":[true,null,"x",-2,1.5],"c":{"d":{}}} "#).expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m["b"][3], Value::from(-2));
        assert_eq!(m["b"][4], Value::from(1.5));
    }

    #[test]
    fn refuses_duplicates_at_any_depth() {
        for doc in [
            r#"{"sub":"alice","sub":"admin"}"#,
            r#"{"a":{"x":1,"x":1}}"#,
            r#"{"a":[{"k":1},{"k":2,"k":3}]}"#,
            // Same name spelled with an escape: still the same member.
            r#"{"sub":"a","\u0073ub":"b"}"#,
        ] {
            assert_eq!(parse_object(doc.as_bytes()), Err(Malformed::DuplicateKey), "{doc}");
        }
        // The same name in two different objects is fine.
        assert!(parse_object(br#"{"a":{"k":1},"b":{"k":1}}"#).is_ok());
    }

    #[test]
    fn depth_limit_is_exact() {
        // The top-level object and MAX_DEPTH - 1 arrays inside it: MAX_DEPTH levels, accepted.
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(parse_object(ok.as_bytes()).is_ok());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(parse_object(deep.as_bytes()), Err(Malformed::TooDeep));
        // Far beyond serde_json's own recursion limit: refused, no stack overflow.
        let hostile = format!("{{\"a\":{}", "[".repeat(100_000));
        assert!(parse_object(hostile.as_bytes()).is_err());
    }

    #[test]
    fn refuses_non_objects_trailing_data_and_bad_json() {
        assert_eq!(parse_object(b"[1]"), Err(Malformed::NotObject));
        assert_eq!(parse_object(b"\"x\""), Err(Malformed::NotObject));
        for bad in [&b"{} {}"[..], b"{}x", b"{", b"", b"{'a':1}", b"{\"a\":01}", b"{\"a\":NaN}", b"\xff"] {
            assert_eq!(parse_object(bad), Err(Malformed::Json), "{}", String::from_utf8_lossy(bad));
        }
        // A lone surrogate is not a Unicode string.
        assert_eq!(parse_object(br#"{"a":"\ud800"}"#), Err(Malformed::Json));
    }
}
