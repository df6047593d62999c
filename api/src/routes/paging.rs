//! Keyset paging shared by the lists ordered newest first: the page size and an opaque cursor
//! naming the last item of the previous page by its time and id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::ApiError;

/// Items per page when the caller does not say.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest page.
pub const MAX_LIMIT: i64 = 200;

/// The page size asked for, checked.
pub fn limit(asked: Option<i64>) -> Result<i64, ApiError> {
    let limit = asked.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )))
    }
}

/// The cursor after the item at `at` with `id`.
pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.to_rfc3339()))
}

/// The time and id a cursor names; a cursor this API did not hand out is a 400.
pub fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad())?;
    let id = id.parse().map_err(|_| bad())?;
    Ok((at.with_timezone(&Utc), id))
}

/// Ends a page fetched with `limit + 1` rows: drops the extra row and returns the cursor of the
/// next page, or `None` on the last page.
pub fn finish_page<T>(
    items: &mut Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> Option<String> {
    if items.len() > usize::try_from(limit).unwrap_or_default() {
        items.pop();
        items.last().map(|last| {
            let (at, id) = key(last);
            encode_cursor(at, id)
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_cursor_names_the_time_and_id_it_was_made_from() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        assert!(decode_cursor("not a cursor").is_err());
    }

    #[test]
    fn limits_outside_one_to_two_hundred_are_refused() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(200)).unwrap(), 200);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(201)).is_err());
    }
}
