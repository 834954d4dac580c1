//! Image digests computed on threads of their own, one per listed hash, beside the network and
//! disk I/O of whoever streams the image (issue 15: sha256 and sha512 in sequence on one core
//! bound a download to about 435 MB/s).
//!
//! What is checked stays `uptane_core::hash::StreamVerifier`'s rule: the verifier is split
//! into its length check, kept here on the caller's side so that nothing past the approved
//! length is ever handed on, and one part per listed hash, each fed on its thread; `finish`
//! joins the parts back and the caller compares with `StreamVerifier::finish`. Chunks are
//! shared ([`Bytes`]), never copied, and grouped in [`Batch`]es so that a thread wakes once
//! per megabyte rather than once per network read.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use uptane_core::hash::{DigestError, StreamVerifier};
use uptane_core::uptane::{ImageVerifier, PendingImage};

/// Batches queued per hash thread before the feeder waits for it: memory stays bounded
/// (about this many megabytes) however fast the bytes arrive.
const QUEUED_BATCHES: usize = 4;

/// What a batch collects before it is handed to the hash threads and the disk.
pub const BATCH_BYTES: usize = 1 << 20;

/// Consecutive chunks of a stream, shared between the threads that hash and write them.
#[derive(Debug, Clone, Default)]
pub struct Batch(Arc<[Bytes]>);

impl Batch {
    /// The chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.0
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Batch {
    fn from(chunk: Bytes) -> Self {
        Self(Arc::from([chunk]))
    }
}

impl From<Vec<Bytes>> for Batch {
    fn from(chunks: Vec<Bytes>) -> Self {
        Self(Arc::from(chunks))
    }
}

/// Collects chunks (network reads of a few kilobytes each) into [`Batch`]es of about
/// [`BATCH_BYTES`], without copying them.
#[derive(Debug, Default)]
pub struct Batcher {
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl Batcher {
    /// Adds a chunk; returns a full batch when there is one.
    pub fn push(&mut self, chunk: Bytes) -> Option<Batch> {
        self.bytes += chunk.len();
        self.chunks.push(chunk);
        (self.bytes >= BATCH_BYTES).then(|| self.take())
    }

    /// What is collected so far (possibly empty).
    pub fn take(&mut self) -> Batch {
        self.bytes = 0;
        Batch::from(std::mem::take(&mut self.chunks))
    }
}

/// Why a threaded check failed or could not run.
#[derive(Debug, thiserror::Error)]
pub enum DigestThreadError {
    /// The bytes are not what the metadata lists.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A hash thread could not be started.
    #[error("cannot start a hash thread: {0}")]
    Spawn(std::io::Error),
    /// A hash thread stopped before it handed back its digest.
    #[error("a hash thread stopped unexpectedly")]
    Lost,
}

/// Why bytes read from a file could not all be fed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Reading failed.
    #[error("reading: {0}")]
    Read(#[from] std::io::Error),
    /// The bytes go past the approved length.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

struct Worker {
    batches: mpsc::Sender<Batch>,
    done: oneshot::Receiver<StreamVerifier>,
}

/// A [`StreamVerifier`] whose digests are computed on threads of their own.
pub struct ThreadedDigests {
    length: StreamVerifier,
    workers: Vec<Worker>,
}

impl std::fmt::Debug for ThreadedDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadedDigests")
            .field("length", &self.length)
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl ThreadedDigests {
    /// Starts a thread for each hash `verifier` lists (it may have been fed already).
    pub fn start(verifier: StreamVerifier) -> Result<Self, DigestThreadError> {
        let (length, parts) = verifier.split();
        let mut workers = Vec::with_capacity(parts.len());
        for mut part in parts {
            let (batches, mut queued) = mpsc::channel::<Batch>(QUEUED_BATCHES);
            let (handed_back, done) = oneshot::channel();
            std::thread::Builder::new()
                .name("image-digest".into())
                .spawn(move || {
                    while let Some(batch) = queued.blocking_recv() {
                        for chunk in batch.chunks() {
                            // A part has no length limit: feeding it cannot fail.
                            let _ = part.update(chunk);
                        }
                    }
                    let _ = handed_back.send(part);
                })
                .map_err(DigestThreadError::Spawn)?;
            workers.push(Worker { batches, done });
        }
        Ok(Self { length, workers })
    }

    /// The check of an approved image's bytes, its digests on threads of their own; the
    /// pending image takes the check back ([`PendingImage::finish`]).
    pub fn for_image(verifier: ImageVerifier) -> Result<(PendingImage, Self), DigestThreadError> {
        let (pending, stream) = verifier.into_stream();
        Ok((pending, Self::start(stream)?))
    }

    /// Feeds everything `input` holds, in batches of [`BATCH_BYTES`] (a kept file re-hashed
    /// before it is trusted). On a blocking thread.
    pub fn feed_blocking(&mut self, mut input: impl std::io::Read) -> Result<(), FeedError> {
        loop {
            let mut buf = BytesMut::zeroed(BATCH_BYTES);
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            self.update_blocking(buf.freeze().into())?;
        }
    }

    /// Checks the length: refuses at once a batch that goes past the approved length, before
    /// anything of it is hashed or handed on.
    fn admit(&mut self, batch: &Batch) -> Result<(), DigestError> {
        batch
            .chunks()
            .iter()
            .try_for_each(|chunk| self.length.update(chunk))
    }

    /// Feeds the next batch; waits while a hash thread is [`QUEUED_BATCHES`] behind.
    pub async fn update(&mut self, batch: Batch) -> Result<(), DigestError> {
        self.admit(&batch)?;
        for worker in &self.workers {
            // A thread that stopped is reported by `finish`.
            let _ = worker.batches.send(batch.clone()).await;
        }
        Ok(())
    }

    /// [`Self::update`] for code on a blocking thread (never on an async worker).
    pub fn update_blocking(&mut self, batch: Batch) -> Result<(), DigestError> {
        self.admit(&batch)?;
        for worker in &self.workers {
            let _ = worker.batches.blocking_send(batch.clone());
        }
        Ok(())
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.length.bytes_seen()
    }

    /// Waits for every digest and hands back the whole check, to be finished by the caller.
    pub async fn finish(self) -> Result<StreamVerifier, DigestThreadError> {
        let Self { length, workers } = self;
        let mut parts = Vec::with_capacity(workers.len());
        for Worker { batches, done } in workers {
            drop(batches);
            parts.push(done.await.map_err(|_| DigestThreadError::Lost)?);
        }
        Ok(StreamVerifier::join(length, parts)?)
    }

    /// [`Self::finish`] for code on a blocking thread.
    pub fn finish_blocking(self) -> Result<StreamVerifier, DigestThreadError> {
        let Self { length, workers } = self;
        let mut parts = Vec::with_capacity(workers.len());
        for Worker { batches, done } in workers {
            drop(batches);
            parts.push(done.blocking_recv().map_err(|_| DigestThreadError::Lost)?);
        }
        Ok(StreamVerifier::join(length, parts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uptane_core::hash::{Hashes, standard_hashes};

    fn batches(data: &[u8]) -> Vec<Batch> {
        let mut batcher = Batcher::default();
        let mut out: Vec<Batch> = data
            .chunks(1000)
            .filter_map(|c| batcher.push(Bytes::copy_from_slice(c)))
            .collect();
        out.push(batcher.take());
        out
    }

    #[tokio::test]
    async fn every_listed_hash_is_checked_on_its_own_thread() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let hashes = standard_hashes(&data);
        let mut v =
            ThreadedDigests::start(StreamVerifier::new(Some(3_000_000), &hashes).unwrap()).unwrap();
        let fed = batches(&data);
        assert!(fed.len() > 2, "batches of about a megabyte");
        for batch in fed {
            v.update(batch).await.unwrap();
        }
        assert_eq!(v.bytes_seen(), 3_000_000);
        v.finish().await.unwrap().finish().unwrap();

        // One byte changed: the digest that sees it fails, naming its algorithm.
        let mut other = data.clone();
        other[1_500_000] ^= 1;
        let mut only_sha512 = hashes.clone();
        only_sha512.remove("sha256");
        let mut v =
            ThreadedDigests::start(StreamVerifier::new(Some(3_000_000), &only_sha512).unwrap())
                .unwrap();
        for batch in batches(&other) {
            v.update(batch).await.unwrap();
        }
        assert!(matches!(
            v.finish().await.unwrap().finish(),
            Err(DigestError::HashMismatch { algorithm, .. }) if algorithm == "sha512"
        ));
    }

    #[test]
    fn blocking_callers_get_the_same_check_and_a_check_fed_before_it_started() {
        let data = vec![5u8; 10_000];
        let mut verifier = StreamVerifier::new(Some(10_000), &standard_hashes(&data)).unwrap();
        verifier.update(&data[..4_000]).unwrap();
        let mut v = ThreadedDigests::start(verifier).unwrap();
        v.update_blocking(Bytes::copy_from_slice(&data[4_000..]).into())
            .unwrap();
        v.finish_blocking().unwrap().finish().unwrap();
    }

    #[tokio::test]
    async fn too_many_bytes_are_refused_before_they_are_hashed() {
        let data = b"abcd";
        let mut v =
            ThreadedDigests::start(StreamVerifier::new(Some(4), &standard_hashes(data)).unwrap())
                .unwrap();
        v.update(Bytes::from_static(b"abc").into()).await.unwrap();
        assert_eq!(
            v.update(Bytes::from_static(b"de").into()).await,
            Err(DigestError::TooLong { limit: 4 })
        );
        assert_eq!(v.bytes_seen(), 5);
        // The threads saw only the three admitted bytes: the parts disagree with the length.
        assert!(matches!(
            v.finish().await,
            Err(DigestThreadError::Digest(DigestError::PartsDisagree {
                length: 5,
                digest: 3
            }))
        ));
        let short =
            ThreadedDigests::start(StreamVerifier::new(Some(5), &standard_hashes(data)).unwrap())
                .unwrap();
        assert!(matches!(
            short.finish().await.unwrap().finish(),
            Err(DigestError::LengthMismatch { .. })
        ));
        let unknown = Hashes::from([("md5".to_string(), "00".to_string())]);
        assert!(matches!(
            StreamVerifier::new(None, &unknown),
            Err(DigestError::UnknownAlgorithm(_))
        ));
    }
}
