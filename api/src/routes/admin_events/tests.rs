#![allow(clippy::unwrap_used)]

use axum::extract::FromRequestParts;
use axum::http::Request;

use idp_events::query::WRITER_WAIT;

use super::*;

async fn read<T: serde::de::DeserializeOwned + IntoParams>(query: &str) -> Result<T, String> {
    let (mut parts, ()) = Request::builder()
        .uri(format!("/v1/admin/events?{query}"))
        .body(())
        .unwrap()
        .into_parts();
    match ApiQuery::<T>::from_request_parts(&mut parts, &()).await {
        Ok(ApiQuery(value)) => Ok(value),
        Err(ApiError::BadRequest(detail)) => Err(detail),
        Err(other) => panic!("not a 400: {other:?}"),
    }
}

#[tokio::test]
async fn types_may_be_repeated_or_comma_separated_and_other_repeats_are_refused() {
    let params: ListParams = read("type=A,B&type=C&type=A").await.unwrap();
    assert_eq!(params.filter.event_types, ["A", "B", "C"]);
    let twice = read::<ListParams>("limit=1&limit=2").await.unwrap_err();
    assert_eq!(twice, "query parameter limit is given more than once");
    let blank = read::<ListParams>("type=A,,B").await.unwrap_err();
    assert!(blank.contains("type must not be empty"), "{blank}");
    let many = (0..=MAX_TYPES).map(|i| format!("T{i}")).collect::<Vec<_>>();
    let too_many = read::<ListParams>(&format!("type={}", many.join(",")))
        .await
        .unwrap_err();
    assert!(too_many.contains("at most 100 event types"), "{too_many}");
}

#[tokio::test]
async fn each_route_accepts_only_its_own_parameters() {
    let unknown = read::<ListParams>("format=csv").await.unwrap_err();
    assert_eq!(
        unknown,
        "unknown query parameter \"format\"; known: stream, stream_prefix, type, actor, \
         correlation_id, from, to, limit, cursor"
    );
    assert!(read::<ExportParams>("limit=10").await.is_err());
    assert!(read::<ExportParams>("cursor=Zjox").await.is_err());
    assert!(read::<ListParams>("color=red").await.is_err());
    let export: ExportParams = read("format=ndjson").await.unwrap();
    assert_eq!(export.format.format, Some(ExportFormat::Ndjson));
    let missing: ExportParams = read("").await.unwrap();
    assert_eq!(missing.format.format, None);
}

#[tokio::test]
async fn values_are_checked_with_messages_that_name_the_parameter() {
    let page: ListParams = read("limit=7&cursor=Zjox&stream_prefix=user-&actor=system")
        .await
        .unwrap();
    assert_eq!(page.page.limit.map(PageLimit::get), Some(7));
    assert_eq!(page.page.cursor, Some(PageCursor::After(1)));
    let filter = page.filter.into_filter().unwrap();
    assert_eq!(
        filter.stream_prefix,
        Some(StreamPrefix::Category(idp_events::Category::User))
    );
    assert_eq!(filter.actor.as_deref(), Some("system"));
    for (query, says) in [
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=ten", "limit must be a whole number from 1 to 1000"),
        (
            "cursor=bm90LWEtY3Vyc29y",
            "cursor is not one this API returned",
        ),
        ("stream=", "stream must not be empty"),
        ("stream=a%00b", "stream must not contain NUL"),
        ("correlation_id=42", "correlation_id \"42\" is not a UUID"),
    ] {
        let detail = read::<ListParams>(query).await.unwrap_err();
        assert!(detail.contains(says), "{query}: {detail}");
    }
    let long = "x".repeat(MAX_TEXT + 1);
    let detail = read::<ListParams>(&format!("actor={long}"))
        .await
        .unwrap_err();
    assert!(
        detail.contains("actor is longer than 512 characters"),
        "{detail}"
    );
    let detail = read::<ExportParams>("format=xml").await.unwrap_err();
    assert!(
        detail.contains("format \"xml\" is not csv or ndjson"),
        "{detail}"
    );
}

#[tokio::test]
async fn times_are_rfc_3339_even_with_a_plus_decoded_as_a_space() {
    let expected = instant("from", "2026-12-01T09:00:00Z").unwrap();
    assert_eq!(
        instant("from", "2026-12-01T10:00:00+01:00").unwrap(),
        expected
    );
    let spaced: ListParams = read("from=2026-12-01T10:00:00+01:00").await.unwrap();
    assert_eq!(spaced.filter.from, Some(expected));
    assert!(instant("from", "yesterday").is_err());
    let backwards: ListParams = read("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z")
        .await
        .unwrap();
    assert!(matches!(
        backwards.filter.into_filter(),
        Err(ApiError::BadRequest(detail)) if detail == "from must be before to"
    ));
}

#[test]
fn an_unsettled_log_is_a_503_that_says_why_and_when_to_retry() {
    let err = refused(QueryError::Unsettled {
        writers: 1,
        waited: WRITER_WAIT,
    });
    let ApiError::RetryLater {
        detail,
        retry_after_secs,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(
        detail.contains("writing to the event log stayed open"),
        "{detail}"
    );
    assert_eq!(*retry_after_secs, UNSETTLED_RETRY_AFTER_SECS);
    let response = err.into_response();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
}
