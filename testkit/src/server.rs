//! A server (the API or the worker) running on the test's runtime, stopped on request.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A server task started by a test; [`stop`](Self::stop) ends it and checks it ended well.
#[derive(Debug)]
pub struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Runs `run` (a server's `run_until_stopped`, given the token that stops it) on the
    /// test's runtime.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(stop.clone()));
        Self { stop, handle }
    }

    /// A server already running elsewhere (on a runtime of its own, say): `stop` cancels it
    /// and `handle` reports how it ended.
    pub fn from_parts(
        stop: CancellationToken,
        handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self { stop, handle }
    }

    /// Asks the server to stop and waits (at most 60 s) for a clean end; panics otherwise.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the server stops within 60 s")
            .unwrap()
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_the_token_the_server_was_given() {
        let running = Running::spawn(|stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        running.stop().await;
    }

    #[tokio::test]
    #[should_panic]
    async fn a_server_ending_in_an_error_fails_the_stop() {
        let running = Running::spawn(|_| async { anyhow::bail!("refused") });
        running.stop().await;
    }
}
