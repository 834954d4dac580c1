//! Image downloads that survive interruptions: bytes go to `downloads/<sha256>.part`,
//! hashed while streaming; an interrupted download (a cut connection, or a `kill -9` and a
//! restart) resumes with an HTTP Range request after re-hashing the kept bytes; only a
//! download whose length and every hash match moves to `images/<sha256>`, and only then is
//! it handed out, as a [`VerifiedFile`].

use std::io::Read;
use std::path::{Path, PathBuf};

use service_runtime::digest::{DigestThreadError, ThreadedDigests};
use uptane_core::uptane::{ApprovedImage, UptaneError, VerifiedImage};

use crate::ports::ImageRepoPort;
use crate::repo::{ClientError, FetchError};

/// Attempts within one call when the connection drops mid-download.
const ATTEMPTS: u32 = 4;

/// A file whose bytes were hashed against an approved image: the capability install and
/// delivery code takes. Only [`ImageStore::fetch`] makes one. The file can still change on
/// disk afterwards, so whoever copies it checks the bytes again as they copy
/// ([`VerifiedFile::copy_verified`]).
#[derive(Debug, Clone)]
pub struct VerifiedFile {
    path: PathBuf,
    image: VerifiedImage,
}

impl VerifiedFile {
    /// What the bytes were verified against.
    pub fn image(&self) -> &VerifiedImage {
        &self.image
    }

    /// The approved image.
    pub fn approved(&self) -> &ApprovedImage {
        self.image.approved()
    }

    /// The file (to stream it to a Secondary, which verifies it itself).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the file into `out` while hashing every byte copied against the approval:
    /// what is written is exactly what is verified, whatever happened to the file since
    /// it was downloaded. Fails, having written possibly bad bytes to `out`, when they
    /// differ; the caller must then discard `out`.
    pub fn copy_verified(&self, out: &mut impl std::io::Write) -> Result<VerifiedImage, CopyError> {
        let mut verifier = self.approved().verifier()?;
        let mut input = std::fs::File::open(&self.path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            verifier.update(&buf[..n])?;
            out.write_all(&buf[..n])?;
        }
        Ok(verifier.finish()?)
    }
}

/// Why a verified copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The bytes are not the approved image (the file changed after it was verified).
    #[error(transparent)]
    Image(#[from] UptaneError),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Where verified images and partial downloads live.
#[derive(Debug, Clone)]
pub struct ImageStore {
    images: PathBuf,
    downloads: PathBuf,
}

/// The name an approved image is kept under: its SHA-256, or its first hash, if it is a
/// digest's hex (a name the metadata chose, such as `../x`, would put the file elsewhere);
/// else the SHA-256 of the digests as listed.
pub fn image_key(image: &ApprovedImage) -> String {
    key_of(image.hashes())
}

fn key_of(hashes: &uptane_core::hash::Hashes) -> String {
    let hex =
        |v: &&String| (32..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit());
    hashes
        .get("sha256")
        .filter(hex)
        .or_else(|| hashes.values().find(hex))
        .cloned()
        .unwrap_or_else(|| {
            uptane_core::hash::sha256_hex(
                serde_json::to_string(hashes)
                    .expect("digests serialize")
                    .as_bytes(),
            )
        })
}

impl ImageStore {
    /// Images in `images`, partial downloads in `downloads`.
    pub fn new(images: PathBuf, downloads: PathBuf) -> Self {
        Self { images, downloads }
    }

    fn image(&self, key: &str) -> PathBuf {
        self.images.join(key)
    }

    fn partial(&self, key: &str) -> PathBuf {
        self.downloads.join(format!("{key}.part"))
    }

    /// Removes images and partial downloads not in `keep` (keys from [`image_key`]).
    pub fn prune(&self, keep: &[&str]) {
        for dir in [&self.images, &self.downloads] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let key = name.strip_suffix(".part").unwrap_or(&name);
                if !keep.contains(&key) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Makes `images/<key>` hold exactly the approved image, downloading from `location`
    /// what is missing, and hands it out verified.
    pub async fn fetch(
        &self,
        source: &impl ImageRepoPort,
        location: &str,
        approved: &ApprovedImage,
    ) -> Result<VerifiedFile, ClientError> {
        let key = image_key(approved);
        let done = self.image(&key);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ClientError::Io { path, source }
        };
        let digest = |e: UptaneError| match e {
            UptaneError::Image { source, .. } if source.is_internal() => ClientError::Io {
                path: done.clone(),
                source: std::io::Error::other(source),
            },
            UptaneError::Image { source, .. } => ClientError::Fetch(FetchError::Digest {
                url: location.to_string(),
                source,
            }),
            other => ClientError::Image(other),
        };
        let threads = |e: DigestThreadError| match e {
            DigestThreadError::Digest(source) if !source.is_internal() => {
                ClientError::Fetch(FetchError::Digest {
                    url: location.to_string(),
                    source,
                })
            }
            other => ClientError::Io {
                path: done.clone(),
                source: std::io::Error::other(other),
            },
        };
        let start = || -> Result<_, ClientError> {
            ThreadedDigests::for_image(approved.verifier().map_err(digest)?).map_err(threads)
        };
        if done.exists() {
            // Kept from an earlier cycle: hashed again before it is trusted.
            let (pending, digests) = start()?;
            let file = tokio::fs::File::open(&done).await.map_err(io(&done))?;
            if let Ok((_, digests)) = rehash_kept(file.into_std().await, digests).await
                && let Ok(stream) = digests.finish().await
                && let Ok(image) = pending.finish(stream)
            {
                return Ok(VerifiedFile { path: done, image });
            }
            let _ = tokio::fs::remove_file(&done).await;
        }
        let partial = self.partial(&key);
        for dir in [&self.images, &self.downloads] {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        let length = approved.length();
        let (pending, digests) = start()?;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&partial)
            .await
            .map_err(io(&partial))?
            .into_std()
            .await;
        let (file, mut digests) = match rehash_kept(file, digests).await {
            Ok(kept) => kept,
            Err(file) => {
                // Kept bytes that cannot be part of the image: start over.
                file.set_len(0).map_err(io(&partial))?;
                (file, start()?.1)
            }
        };
        let mut attempt = 0;
        while digests.bytes_seen() < length {
            attempt += 1;
            match source
                .download_to(location, &file, &mut digests, length)
                .await
            {
                Ok(()) => {}
                Err(FetchError::Transport { .. }) if attempt < ATTEMPTS => {
                    tracing::info!(
                        location,
                        from = digests.bytes_seen(),
                        "download interrupted; resuming"
                    );
                }
                Err(e @ FetchError::Digest { .. }) => {
                    drop(file);
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
            if attempt >= ATTEMPTS && digests.bytes_seen() < length {
                break;
            }
        }
        // Durable before it is renamed into place (also a kept partial file that was already
        // complete, which no download above wrote and synced).
        file.sync_all().map_err(io(&partial))?;
        drop(file);
        let checked = digests
            .finish()
            .await
            .map_err(threads)
            .and_then(|stream| pending.finish(stream).map_err(digest));
        let image = match checked {
            Ok(image) => image,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&partial, &done)
            .await
            .map_err(io(&done))?;
        service_runtime::files::sync_dir(&self.images).map_err(io(&self.images))?;
        Ok(VerifiedFile { path: done, image })
    }
}

/// Feeds the bytes already in `file` to `digests`, from the start, on a blocking thread;
/// hands back the file (positioned at its end) and the digests, or only the file when its
/// bytes cannot be the start of the image (too many) or cannot be read.
async fn rehash_kept(
    file: std::fs::File,
    digests: ThreadedDigests,
) -> Result<(std::fs::File, ThreadedDigests), std::fs::File> {
    let fed = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut digests = digests;
        use std::io::Seek;
        let kept = file.seek(std::io::SeekFrom::Start(0)).is_ok()
            && digests.feed_blocking(&mut file).is_ok();
        if kept { Ok((file, digests)) } else { Err(file) }
    })
    .await;
    match fed {
        Ok(fed) => fed,
        // The blocking task panicked: nothing to hand back but a failed start.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digest the metadata lists names the kept file only if it is hex: `../x` would put
    /// it (and the partial download, and what a failed check removes) outside the store.
    #[test]
    fn an_image_is_kept_under_a_hex_digest_only() {
        let hashes = |pairs: &[(&str, &str)]| -> uptane_core::hash::Hashes {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sha256 = "ab".repeat(32);
        let sha512 = "cd".repeat(64);
        assert_eq!(
            key_of(&hashes(&[("sha256", &sha256), ("sha512", &sha512)])),
            sha256
        );
        assert_eq!(
            key_of(&hashes(&[("sha256", "../../etc/x"), ("sha512", &sha512)])),
            sha512
        );
        let odd = key_of(&hashes(&[("sha256", "../../etc/x")]));
        assert_eq!(odd.len(), 64);
        assert!(odd.bytes().all(|b| b.is_ascii_hexdigit()), "{odd}");
    }
}
