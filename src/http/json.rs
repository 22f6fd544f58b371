//! Reading JSON bodies into typed requests (SPEC §4: JSON in, `{error:
//! {code, message}}` out).
//!
//! serde's derived structs also read a JSON array, field by field in
//! order, so `[null, null]` was taken for `{"reduced_ring_time": null,
//! "wrap_up_idle": null}` (found by schemathesis: a body the OpenAPI
//! document says is an object was accepted as an array). A request body,
//! and each lead of an array of leads, must be an object where the type
//! is a struct: [`from_value`] refuses anything else with 422.

use axum::extract::{FromRequest, Request};
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;

use super::{ApiError, ApiJson};

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    /// Content type, size and syntax as `axum::Json` checks them (415, 413,
    /// 400), then the shape (422, naming the path of the offending key).
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<Value>::from_request(req, state).await?;
        from_value(value).map(ApiJson)
    }
}

/// `value` as a `T`, a struct only from a JSON object; a wrong shape is
/// [`ApiError::WrongShape`] with the path of the offending key.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(ObjectsOnly(value)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::WrongShape(e.into_inner().to_string())
        } else {
            ApiError::WrongShape(format!("{path}: {}", e.into_inner()))
        }
    })
}

/// A JSON value that gives a struct only from an object; everything else
/// is `serde_json::Value`'s own deserializer.
struct ObjectsOnly(Value);

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
                self.0.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for ObjectsOnly {
    type Error = serde_json::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if !self.0.is_object() {
            return Err(serde::de::Error::custom(format!(
                "expected a JSON object, found {}",
                kind(&self.0)
            )));
        }
        self.0.deserialize_struct(name, fields, visitor)
    }

    forward!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_string(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_map(),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
        deserialize_identifier(),
        deserialize_ignored_any(),
    );
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Patch {
        a: Option<bool>,
        b: Option<f64>,
    }

    #[test]
    fn a_struct_comes_from_an_object_only() {
        // Found by schemathesis: `[null, null]` read as `{a: null, b: null}`.
        let e = from_value::<Patch>(json!([null, null])).unwrap_err();
        assert!(matches!(e, ApiError::WrongShape(_)), "{e:?}");
        assert_eq!(e.to_string(), "expected a JSON object, found an array");
        assert!(from_value::<Patch>(json!({"a": true})).is_ok());
        assert!(matches!(
            from_value::<Patch>(json!(null)),
            Err(ApiError::WrongShape(_))
        ));
        // Other types read as before, and errors name the key.
        assert_eq!(from_value::<Value>(json!([1])).unwrap(), json!([1]));
        let e = from_value::<Patch>(json!({"b": "x"})).unwrap_err();
        assert!(e.to_string().starts_with("b: invalid type"), "{e}");
    }
}
