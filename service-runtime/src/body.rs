//! Request bodies read whole, within a size and a time: the one rule both servers apply
//! to the bodies they keep in memory (JSON, manifests, metadata).

use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Longer than the limit, declared or as it arrived (413).
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// Not all there within the time (408).
    #[error("the body took longer than {0} s")]
    Timeout(u64),
    /// Cut, or malformed on the wire (a broken chunked encoding, a reset stream): 400, not a
    /// size the client exceeded.
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads `body` whole: refused from its declared length before a byte is read when that is
/// above `limit`, and as soon as what arrived passes it; within `timeout`.
pub async fn read_limited(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    if axum::body::HttpBody::size_hint(&body)
        .exact()
        .is_some_and(|n| n > limit as u64)
    {
        return Err(BodyError::TooLarge(limit));
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            if out.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout(timeout.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_refused_for_its_size_its_time_or_its_break_each_saying_which() {
        let limit = 10;
        let ok = read_limited(Body::from("0123456789"), limit, Duration::from_secs(5)).await;
        assert_eq!(ok.unwrap(), Bytes::from("0123456789"));
        assert_eq!(
            read_limited(Body::from("01234567890"), limit, Duration::from_secs(5)).await,
            Err(BodyError::TooLarge(limit))
        );
        let chunks = futures_util::stream::iter(["012345", "67890"].map(Ok::<_, std::io::Error>));
        assert_eq!(
            read_limited(Body::from_stream(chunks), limit, Duration::from_secs(5)).await,
            Err(BodyError::TooLarge(limit))
        );
        let broken = futures_util::stream::iter([
            Ok("0123".to_string()),
            Err(std::io::Error::other("connection reset")),
        ]);
        assert!(matches!(
            read_limited(Body::from_stream(broken), limit, Duration::from_secs(5)).await,
            Err(BodyError::Broken(e)) if e.contains("connection reset")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_refused() {
        let stalled = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        assert_eq!(
            read_limited(Body::from_stream(stalled), 10, Duration::from_secs(30)).await,
            Err(BodyError::Timeout(30))
        );
    }
}
