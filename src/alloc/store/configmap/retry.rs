//! Retrying Kubernetes API calls that failed for reasons that may pass.

use std::future::Future;

use backon::Retryable;
use tracing::debug;

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

/// Runs `call` until it succeeds, fails for good, or [`crate::backoff::api_call`] gives up.
pub async fn with_retries<T, F, Fut>(what: &str, call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    call.retry(crate::backoff::api_call())
        .sleep(tokio::time::sleep)
        .when(is_transient)
        .notify(|error, retry_in| debug!(what, %error, ?retry_in, "retrying Kubernetes API call"))
        .await
}
