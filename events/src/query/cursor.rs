//! Page cursors: a direction and a position, opaque to clients (URL-safe base64 of `f:<n>` or
//! `b:<n>`).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Where a page starts: after or before a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCursor {
    /// Events after this position, ascending (a page's `next`).
    After(i64),
    /// Events before this position, the closest first (a page's `prev`); shown ascending.
    Before(i64),
}

/// A cursor that no page handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cursor is not one this API returned")]
pub struct CursorError;

impl PageCursor {
    /// Reads a cursor as [`fmt::Display`] writes it.
    ///
    /// # Errors
    /// [`CursorError`] for anything else, a negative position included.
    pub fn parse(raw: &str) -> Result<Self, CursorError> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| CursorError)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CursorError)?;
        let (direction, position) = text.split_once(':').ok_or(CursorError)?;
        let position: i64 = position.parse().map_err(|_| CursorError)?;
        if position < 0 {
            return Err(CursorError);
        }
        match direction {
            "f" => Ok(Self::After(position)),
            "b" => Ok(Self::Before(position)),
            _ => Err(CursorError),
        }
    }
}

impl FromStr for PageCursor {
    type Err = CursorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = match self {
            Self::After(p) => format!("f:{p}"),
            Self::Before(p) => format!("b:{p}"),
        };
        f.write_str(&URL_SAFE_NO_PAD.encode(raw))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cursors_name_a_direction_and_a_position() {
        for cursor in [
            PageCursor::After(0),
            PageCursor::After(42),
            PageCursor::Before(7),
        ] {
            assert_eq!(PageCursor::parse(&cursor.to_string()).unwrap(), cursor);
        }
        for bad in [
            "",
            "f:1",
            "Zjph",
            "eDox",
            "Zjot MQ",
            &URL_SAFE_NO_PAD.encode("f:-1"),
        ] {
            assert_eq!(PageCursor::parse(bad), Err(CursorError), "{bad}");
        }
    }

    #[test]
    fn the_spelling_of_a_cursor_is_stable() {
        assert_eq!(PageCursor::After(1).to_string(), "Zjox");
        assert_eq!("Yjo3".parse::<PageCursor>(), Ok(PageCursor::Before(7)));
    }
}
