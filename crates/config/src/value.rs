//! A generic YAML tree, so that one bad field does not stop the reading of
//! the others: serde-saphyr builds it, `decode` turns it into typed structs.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// A YAML value, mappings kept in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i128),
    /// A number with a fraction.
    Float(f64),
    /// A string (quoted or plain).
    Str(String),
    /// A sequence.
    Seq(Vec<Value>),
    /// A mapping with string keys, in document order.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// A short description of the value's kind for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::Null => "nothing".into(),
            Value::Bool(b) => format!("boolean {b}"),
            Value::Int(i) => format!("number {i}"),
            Value::Float(x) => format!("number {x}"),
            Value::Str(s) => format!("string {s:?}"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i.into()))
    }
    fn visit_u64<E>(self, i: u64) -> Result<Value, E> {
        Ok(Value::Int(i.into()))
    }
    fn visit_i128<E>(self, i: i128) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u128<E: serde::de::Error>(self, i: u128) -> Result<Value, E> {
        i128::try_from(i)
            .map(Value::Int)
            .map_err(|_| E::custom("number too large"))
    }
    fn visit_f64<E>(self, x: f64) -> Result<Value, E> {
        Ok(Value::Float(x))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<KeyString>()? {
            out.push((k.0, map.next_value()?));
        }
        Ok(Value::Map(out))
    }
}

/// A mapping key: YAML allows numbers and booleans as keys; they are read as text.
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyString, D::Error> {
        match Value::deserialize(d)? {
            Value::Str(s) => Ok(KeyString(s)),
            Value::Int(i) => Ok(KeyString(i.to_string())),
            Value::Bool(b) => Ok(KeyString(b.to_string())),
            Value::Float(x) => Ok(KeyString(x.to_string())),
            Value::Null => Ok(KeyString("null".into())),
            other => Err(serde::de::Error::custom(format!(
                "a mapping key must be text, found {}",
                other.kind()
            ))),
        }
    }
}

/// Parses YAML text into a [`Value`]; the error is serde-saphyr's, with line and column.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
}
