//! Ordered JSON. serde_json's `Map` sorts keys (no `preserve_order` feature here); the real CLI
//! prints `type` first, so events are built with this small insertion-ordered tree instead.
//! Also the ids the events carry (uuids, `msg_01…`, `toolu_01…`).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// A JSON value whose objects keep their keys in insertion order.
pub(crate) enum J {
    /// Any plain value (also used to embed client JSON verbatim).
    Raw(Value),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl Serialize for J {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Raw(v) => v.serialize(s),
            J::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            J::Obj(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

macro_rules! impl_from_for_j {
    ($($t:ty),*) => {$(
        impl From<$t> for J {
            fn from(v: $t) -> J {
                J::Raw(Value::from(v))
            }
        }
    )*};
}
impl_from_for_j!(&str, String, bool, u32, u64, i32, usize, f64, Value);

impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}

impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map_or(J::Raw(Value::Null), Into::into)
    }
}

/// `obj! { "k": v, ... }` builds an ordered object.
macro_rules! obj {
    ($($k:literal : $v:expr),* $(,)?) => {
        $crate::json::J::Obj(vec![$(($k, $crate::json::J::from($v))),*])
    };
}
pub(crate) use obj;

/// `arr![a, b]` builds an array.
macro_rules! arr {
    ($($v:expr),* $(,)?) => { $crate::json::J::Arr(vec![$($crate::json::J::from($v)),*]) };
}
pub(crate) use arr;

pub(crate) fn null() -> J {
    J::Raw(Value::Null)
}

pub(crate) fn to_line(j: &J) -> String {
    serde_json::to_string(j).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An id like the API's `msg_01…` / `toolu_01…`.
pub(crate) fn api_id(prefix: &str) -> String {
    format!(
        "{prefix}_01{}",
        &uuid::Uuid::new_v4().simple().to_string()[..22]
    )
}
