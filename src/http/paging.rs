//! List paging (SPEC §4): `{data, next}` with `?limit=` (1 to 1000, default
//! 100) and an opaque `?cursor=`.

use serde::{Deserialize, Serialize};

use super::ApiError;

/// Largest page (SPEC §4).
pub const MAX_LIMIT: u32 = 1000;
/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;

/// The paging query parameters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page size, checked against 1..=[`MAX_LIMIT`].
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit.as_deref() {
            None | Some("") => Ok(DEFAULT_LIMIT),
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::BadParam {
                    param: "limit",
                    reason: "must be an integer from 1 to 1000",
                }),
            },
        }
    }

    /// The decoded cursor: the keys of the previous page's last item.
    pub fn cursor(&self, kind: char) -> Result<Option<Vec<i64>>, ApiError> {
        match self.cursor.as_deref() {
            None | Some("") => Ok(None),
            Some(c) => decode_cursor(kind, c).map(Some).ok_or(ApiError::BadParam {
                param: "cursor",
                reason: "not a cursor returned by this list",
            }),
        }
    }
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// The cursor of the next page, `null` on the last.
    pub next: Option<String>,
}

/// Encodes keyset-paging keys as an opaque token; `kind` tells the lists
/// apart so one list's cursor is refused by another.
pub fn encode_cursor(kind: char, keys: &[i64]) -> String {
    let text = std::iter::once(kind.to_string())
        .chain(keys.iter().map(|k| k.to_string()))
        .collect::<Vec<_>>()
        .join(":");
    hex::encode(text)
}

fn decode_cursor(kind: char, c: &str) -> Option<Vec<i64>> {
    let bytes = hex::decode(c).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != kind.to_string() {
        return None;
    }
    parts.map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_others() {
        let c = encode_cursor('L', &[42]);
        let p = PageParams {
            limit: None,
            cursor: Some(c.clone()),
        };
        assert_eq!(p.cursor('L').unwrap(), Some(vec![42]));
        assert!(p.cursor('C').is_err());
        let bad = PageParams {
            limit: Some("1001".into()),
            cursor: Some("zz".into()),
        };
        assert!(bad.limit().is_err());
        assert!(bad.cursor('L').is_err());
        assert_eq!(PageParams::default().limit().unwrap(), DEFAULT_LIMIT);
    }
}
