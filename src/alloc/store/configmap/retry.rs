//! Retrying Kubernetes API calls that failed for reasons that may pass.

use std::future::Future;
use std::time::Duration;

use tracing::debug;

const ATTEMPTS: u32 = 7;
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Server errors, throttling and transport failures may pass; 4xx answers will not.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// An API error as one readable line: the server's own message with its code and reason (kube's
/// `Display` appends a debug dump of the whole `Status`), anything else with its causes.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => crate::cluster::one_line(other),
    }
}

/// Runs `call` until it succeeds, fails for good, or about six seconds of backoff are spent.
pub async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = FIRST_DELAY;
    for attempt in 1.. {
        match call().await {
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                debug!(what, attempt, error = %e, "retrying Kubernetes API call");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
    unreachable!("the loop returns")
}
