//! The filters of a query and the SQL conditions they become.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::Category;

/// Filters of the event log. All given filters must match; an empty filter matches every event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Only the events of this stream (exact).
    pub stream: Option<String>,
    /// Only the events of streams whose id starts with this.
    pub stream_prefix: Option<StreamPrefix>,
    /// Only events of these types (none: any type).
    pub types: Vec<String>,
    /// Only events whose metadata names this actor.
    pub actor: Option<String>,
    /// Only events whose metadata carries this correlation id.
    pub correlation_id: Option<Uuid>,
    /// Only events recorded at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant.
    pub to: Option<DateTime<Utc>>,
}

/// The start of the stream ids a filter wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPrefix {
    /// `<category>-`: every stream of a category whose name is one word (`user-`, `project-`),
    /// which the category index walks in log order.
    Category(Category),
    /// Any other start of an id (`login-unknown-`, `user-0190`, `thing`).
    Text(String),
}

impl StreamPrefix {
    /// The prefix that `text` asks for.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        Category::ALL
            .into_iter()
            // The category index is over the part before the first `-`: a category whose name
            // has a `-` of its own shares that part with another (`login-unknown`, `login`).
            .filter(|category| !category.as_str().contains('-'))
            .find(|category| text.strip_suffix('-') == Some(category.as_str()))
            .map_or(Self::Text(text), Self::Category)
    }

    /// The prefix as stream ids start with it.
    pub fn as_text(&self) -> String {
        match self {
            Self::Category(category) => format!("{category}-"),
            Self::Text(text) => text.clone(),
        }
    }
}

impl EventFilter {
    /// Appends ` and <condition>` for each filter, written so that an index ending in
    /// `position` serves it (see the migration `event_query_indexes`). Conditions name the
    /// table `events` as `e`.
    pub fn push_conditions(&self, query: &mut QueryBuilder<'_, Postgres>) {
        if let Some(stream) = &self.stream {
            query.push(" and e.stream_id = ").push_bind(stream.clone());
        }
        match &self.stream_prefix {
            None => {}
            // The category index walks the category in log order. `split_part` is `user` for
            // `user` itself too, hence the `<>`; no `starts_with` here, which the planner would
            // take for an independent filter and then misjudge the category index.
            Some(StreamPrefix::Category(category)) => {
                query
                    .push(" and split_part(e.stream_id, '-', 1) = ")
                    .push_bind(category.as_str())
                    .push(" and e.stream_id <> ")
                    .push_bind(category.as_str());
            }
            // Any other prefix: a byte-wise range of the pattern index.
            Some(StreamPrefix::Text(prefix)) => {
                query
                    .push(" and e.stream_id ~>=~ ")
                    .push_bind(prefix.clone());
                if let Some(upper) = prefix_upper_bound(prefix) {
                    query.push(" and e.stream_id ~<~ ").push_bind(upper);
                }
                query
                    .push(" and starts_with(e.stream_id, ")
                    .push_bind(prefix.clone())
                    .push(")");
            }
        }
        match self.types.as_slice() {
            [] => {}
            [one] => {
                query.push(" and e.event_type = ").push_bind(one.clone());
            }
            many => {
                query
                    .push(" and e.event_type = any(")
                    .push_bind(many.to_vec())
                    .push(")");
            }
        }
        if let Some(actor) = &self.actor {
            query
                .push(" and (e.metadata ->> 'actor') = ")
                .push_bind(actor.clone());
        }
        if let Some(correlation) = &self.correlation_id {
            // `Metadata` serialises the id hyphenated and lowercase, as `Uuid` displays it.
            query
                .push(" and (e.metadata ->> 'correlation_id') = ")
                .push_bind(correlation.to_string());
        }
        if let Some(from) = self.from {
            query.push(" and e.recorded_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            query.push(" and e.recorded_at < ").push_bind(to);
        }
    }
}

/// The smallest string above every string starting with `prefix`, in byte order: the prefix
/// with its last character replaced by the next one (UTF-8 keeps code point order in bytes).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_get_a_byte_wise_upper_bound() {
        assert_eq!(prefix_upper_bound("user-").as_deref(), Some("user."));
        assert_eq!(prefix_upper_bound("a\u{7f}").as_deref(), Some("a\u{80}"));
        assert_eq!(
            prefix_upper_bound("a\u{d7ff}").as_deref(),
            Some("a\u{e000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10ffff}"), None);
    }

    #[test]
    fn a_prefix_naming_a_one_word_category_is_that_category() {
        assert_eq!(
            StreamPrefix::new("user-"),
            StreamPrefix::Category(Category::User)
        );
        assert_eq!(
            StreamPrefix::new("login-"),
            StreamPrefix::Category(Category::Login)
        );
        for text in [
            "login-unknown-",
            "email-request-",
            "user",
            "users-",
            "-",
            "user-0",
        ] {
            assert_eq!(StreamPrefix::new(text), StreamPrefix::Text(text.into()));
        }
        assert_eq!(StreamPrefix::new("project-").as_text(), "project-");
    }

    #[test]
    fn each_filter_adds_its_condition() {
        let filter = EventFilter {
            stream_prefix: Some(StreamPrefix::new("user-")),
            types: vec!["A".into(), "B".into()],
            actor: Some("system".into()),
            ..EventFilter::default()
        };
        let mut query = QueryBuilder::new("select 1 from events e where true");
        filter.push_conditions(&mut query);
        assert_eq!(
            query.sql(),
            "select 1 from events e where true and split_part(e.stream_id, '-', 1) = $1 \
             and e.stream_id <> $2 and e.event_type = any($3) and (e.metadata ->> 'actor') = $4"
        );
        let mut query = QueryBuilder::new("");
        EventFilter {
            stream_prefix: Some(StreamPrefix::new("login-unknown-")),
            ..EventFilter::default()
        }
        .push_conditions(&mut query);
        assert_eq!(
            query.sql(),
            " and e.stream_id ~>=~ $1 and e.stream_id ~<~ $2 and starts_with(e.stream_id, $3)"
        );
    }
}
