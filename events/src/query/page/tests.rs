#![allow(clippy::unwrap_used)]

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::*;

fn event(position: i64) -> RecordedEvent {
    RecordedEvent {
        position,
        transaction_id: 1,
        event_id: Uuid::nil(),
        stream_id: "thing-1".into(),
        stream_version: position,
        event_type: "Happened".into(),
        schema_version: 1,
        data: json!({}),
        metadata: json!({}),
        recorded_at: Utc::now(),
        hash: Vec::new(),
    }
}

fn rows(positions: &[i64]) -> Vec<RecordedEvent> {
    positions.iter().copied().map(event).collect()
}

fn positions(page: &Page) -> Vec<i64> {
    page.events.iter().map(|e| e.position).collect()
}

const EXTENT: Extent = Extent {
    first: 0,
    last: 40,
    horizon: 50,
};

#[test]
fn limits_are_one_to_a_thousand() {
    assert_eq!(PageLimit::default().get(), DEFAULT_LIMIT);
    assert_eq!(PageLimit::new(1).unwrap().get(), 1);
    assert_eq!(PageLimit::new(MAX_LIMIT).unwrap().get(), MAX_LIMIT);
    assert_eq!(PageLimit::new(0), None);
    assert_eq!(PageLimit::new(MAX_LIMIT + 1), None);
}

#[test]
fn a_full_first_page_leads_on_after_its_last_event() {
    let limit = PageLimit::new(2).unwrap();
    let page = finish(rows(&[3, 5, 8]), EXTENT, None, limit);
    assert_eq!(positions(&page), [3, 5]);
    assert_eq!(page.next, Some(PageCursor::After(5)));
    assert_eq!(page.prev, None);
    assert_eq!(page.resume, PageCursor::After(5));
}

#[test]
fn the_last_page_has_no_next_but_resumes_after_the_horizon() {
    let limit = PageLimit::new(2).unwrap();
    let page = finish(rows(&[8]), EXTENT, Some(PageCursor::After(5)), limit);
    assert_eq!(positions(&page), [8]);
    assert_eq!(page.next, None);
    assert_eq!(page.prev, Some(PageCursor::Before(8)));
    assert_eq!(page.resume, PageCursor::After(EXTENT.horizon));

    let empty = finish(Vec::new(), EXTENT, None, limit);
    assert_eq!((empty.next, empty.prev), (None, None));
    assert_eq!(empty.resume, PageCursor::After(EXTENT.horizon));

    // A cursor beyond the horizon is never resumed from below itself.
    let beyond = finish(Vec::new(), EXTENT, Some(PageCursor::After(70)), limit);
    assert_eq!(beyond.resume, PageCursor::After(70));
}

#[test]
fn a_page_read_backwards_is_shown_ascending_and_leads_both_ways() {
    let limit = PageLimit::new(2).unwrap();
    // Rows arrive closest first.
    let page = finish(rows(&[8, 5, 3]), EXTENT, Some(PageCursor::Before(9)), limit);
    assert_eq!(positions(&page), [5, 8]);
    assert_eq!(page.next, Some(PageCursor::After(8)));
    assert_eq!(page.prev, Some(PageCursor::Before(5)));
    assert_eq!(page.resume, PageCursor::After(8));

    let first = finish(rows(&[2]), EXTENT, Some(PageCursor::Before(3)), limit);
    assert_eq!(first.prev, None);
    assert_eq!(first.next, Some(PageCursor::After(2)));
}

#[test]
fn the_page_query_stays_within_the_extent_and_reads_one_row_more() {
    let limit = PageLimit::new(10).unwrap();
    let filter = EventFilter {
        stream: Some("thing-1".into()),
        ..EventFilter::default()
    };
    let forwards = page_query(&filter, EXTENT, Some(PageCursor::After(4)), limit).into_sql();
    assert!(forwards.ends_with(
        " where e.position >= $1 and e.position <= $2 and e.position > $3 \
         and e.stream_id = $4 order by e.position limit $5"
    ));
    let backwards = page_query(&filter, EXTENT, Some(PageCursor::Before(4)), limit).into_sql();
    assert!(backwards.contains(" and e.position < $3 "));
    assert!(backwards.ends_with(" order by e.position desc limit $5"));
}
