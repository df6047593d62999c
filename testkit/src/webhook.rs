//! A real HTTP server receiving provisioning webhooks, which fails on command: it answers with
//! the statuses it is told to, in order, then with its default; it can hold answers back (to
//! kill a worker in the middle of a call) and it records every request it received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request's headers.
    pub headers: HeaderMap,
    /// The request's body.
    pub body: Bytes,
}

impl Received {
    /// The header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Debug, Default)]
struct Script {
    next: VecDeque<u16>,
    default: u16,
    delay: Duration,
    received: Vec<Received>,
}

/// The server; stops when dropped.
#[derive(Debug)]
pub struct WebhookServer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookServer {
    /// A server answering `default` to every request.
    pub async fn start(default: u16) -> Self {
        let script = Arc::new(Mutex::new(Script {
            default,
            ..Script::default()
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, script, task }
    }

    /// Where to send the webhooks.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The next answers, before the default takes over again.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap().next.extend(statuses);
    }

    /// The answer from now on.
    pub fn answer_always(&self, status: u16) {
        let mut script = self.script.lock().unwrap();
        script.next.clear();
        script.default = status;
    }

    /// Holds every answer back this long.
    pub fn delay(&self, delay: Duration) {
        self.script.lock().unwrap().delay = delay;
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (status, delay) = {
        let mut script = script.lock().unwrap();
        script.received.push(Received { headers, body });
        let status = script.next.pop_front().unwrap_or(script.default);
        (status, script.delay)
    };
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap()
}
