//! The test's view of RabbitMQ: where it is, a queue prefix no other test uses, the broker
//! reached through a [`Proxy`], and removing a test's queues afterwards.

use crate::proxy::Proxy;

/// `AMQP_URL`, or the local broker's default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A queue prefix of this test alone.
pub fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// [`amqp_url`] with its host and port replaced by those of `proxy`.
pub fn amqp_url_via(proxy: &Proxy) -> String {
    let mut url = url::Url::parse(&amqp_url()).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.port())).unwrap();
    url.to_string()
}

/// A proxy to the broker of [`amqp_url`].
pub async fn amqp_proxy() -> Proxy {
    let url = url::Url::parse(&amqp_url()).unwrap();
    Proxy::to(url.host_str().unwrap(), url.port().unwrap_or(5672)).await
}

/// Deletes the queues `queues` of `prefix`, each with its dead-letter queue, and the prefix's
/// dead-letter exchange (best effort), so test runs leave the broker clean.
pub async fn delete_queues(prefix: &str, queues: &[&str]) {
    let Ok(conn) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        for queue in queues {
            for name in [
                format!("{prefix}.{queue}"),
                format!("{prefix}.{queue}.dead"),
            ] {
                let _ = channel
                    .queue_delete(
                        name.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = channel
            .exchange_delete(
                format!("{prefix}.dead-letter").as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_differ_and_are_valid_queue_name_parts() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert_ne!(a, b);
        assert!(a.starts_with("test-"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
