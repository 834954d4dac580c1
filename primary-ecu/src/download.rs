//! Image downloads that survive interruptions: bytes go to `downloads/<sha256>.part`,
//! hashed while streaming; an interrupted download (a cut connection, or a `kill -9` and a
//! restart) resumes with an HTTP Range request after re-hashing the kept bytes; only a
//! download whose length and every hash match moves to `images/<sha256>`.

use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use uptane_core::hash::StreamVerifier;
use uptane_core::metadata::TargetFile;

use crate::repo::{ClientError, FetchError, Fetcher};

/// Attempts within one call when the connection drops mid-download.
const ATTEMPTS: u32 = 4;

/// Where verified images and partial downloads live.
#[derive(Debug, Clone)]
pub struct ImageStore {
    images: PathBuf,
    downloads: PathBuf,
}

impl ImageStore {
    /// Images in `images`, partial downloads in `downloads`.
    pub fn new(images: PathBuf, downloads: PathBuf) -> Self {
        Self { images, downloads }
    }

    /// The verified image with this SHA-256.
    pub fn image(&self, sha256: &str) -> PathBuf {
        self.images.join(sha256)
    }

    fn partial(&self, sha256: &str) -> PathBuf {
        self.downloads.join(format!("{sha256}.part"))
    }

    /// Removes images and partial downloads not in `keep` (SHA-256s).
    pub fn prune(&self, keep: &[&str]) {
        for dir in [&self.images, &self.downloads] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let sha = name.strip_suffix(".part").unwrap_or(&name);
                if !keep.contains(&sha) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Makes `images/<sha256>` hold exactly the bytes `info` describes, downloading from
    /// `url` what is missing. Returns its path.
    pub async fn fetch(
        &self,
        fetcher: &Fetcher,
        url: &str,
        sha256: &str,
        info: &TargetFile,
    ) -> Result<PathBuf, ClientError> {
        let done = self.image(sha256);
        if done.exists() {
            return Ok(done);
        }
        let partial = self.partial(sha256);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ClientError::Io { path, source }
        };
        for dir in [&self.images, &self.downloads] {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        let digest = |source| {
            ClientError::Fetch(FetchError::Digest {
                url: url.to_string(),
                source,
            })
        };
        let mut verifier = StreamVerifier::new(Some(info.length), &info.hashes).map_err(digest)?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&partial)
            .await
            .map_err(io(&partial))?;
        if !rehash_kept(&mut file, &mut verifier).await {
            // Kept bytes that cannot be part of the image: start over.
            file.set_len(0).await.map_err(io(&partial))?;
            verifier = StreamVerifier::new(Some(info.length), &info.hashes).map_err(digest)?;
        }
        let mut attempt = 0;
        while verifier.bytes_seen() < info.length {
            attempt += 1;
            match fetcher
                .download_to(url, &mut file, &mut verifier, info.length)
                .await
            {
                Ok(()) => {}
                Err(FetchError::Transport { .. }) if attempt < ATTEMPTS => {
                    tracing::info!(
                        url,
                        from = verifier.bytes_seen(),
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
            if attempt >= ATTEMPTS && verifier.bytes_seen() < info.length {
                break;
            }
        }
        file.sync_all().await.map_err(io(&partial))?;
        drop(file);
        if let Err(e) = verifier.finish() {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(digest(e));
        }
        tokio::fs::rename(&partial, &done)
            .await
            .map_err(io(&done))?;
        service_runtime::files::sync_dir(&self.images).map_err(io(&self.images))?;
        Ok(done)
    }
}

/// Feeds the bytes already in `file` to `verifier`, from the start; `false` when they
/// cannot be the start of the image (too many) or cannot be read.
async fn rehash_kept(file: &mut tokio::fs::File, verifier: &mut StreamVerifier) -> bool {
    use tokio::io::AsyncSeekExt;
    if file.seek(std::io::SeekFrom::Start(0)).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => return true,
            Ok(n) if verifier.update(&buf[..n]).is_ok() => {}
            _ => return false,
        }
    }
}
