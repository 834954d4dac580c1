//! What the Image repository holds, read and verified with `uptane-core` as any TUF client
//! would: the Director assigns only images the Image repository vouches for.

use std::collections::HashMap;
use std::sync::Mutex;

use uptane_core::metadata::TargetFile;
use uptane_core::refresh::{Refresh, Step};
use uptane_core::time::UtcTime;
use uptane_core::trusted::{ImageRepo, Limits};
use uptane_core::verify::Raw;

use crate::error::DirectorError;

#[derive(Debug)]
enum Source {
    Http {
        base: String,
        client: reqwest::Client,
    },
    Memory(HashMap<String, Vec<u8>>),
}

/// The Image repository as seen through its pinned root.
#[derive(Debug)]
pub struct ImageCatalog {
    source: Source,
    root: Mutex<Vec<u8>>,
}

fn repo_err(e: impl std::fmt::Display) -> DirectorError {
    DirectorError::ImageRepository(e.to_string())
}

impl ImageCatalog {
    /// A catalog of the Image repository whose metadata is served under `base`
    /// (e.g. `https://host:port/metadata`), trusting `pinned_root`, over `tls`.
    pub fn http(
        base: &str,
        pinned_root: Vec<u8>,
        tls: &service_runtime::http::ClientTls,
    ) -> Result<Self, DirectorError> {
        let client = tls
            .reqwest()
            .map_err(repo_err)?
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(repo_err)?;
        Ok(Self {
            source: Source::Http {
                base: base.trim_end_matches('/').to_string(),
                client,
            },
            root: Mutex::new(pinned_root),
        })
    }

    /// A catalog over metadata files already in memory (file name to bytes).
    pub fn memory(files: HashMap<String, Vec<u8>>, pinned_root: Vec<u8>) -> Self {
        Self {
            source: Source::Memory(files),
            root: Mutex::new(pinned_root),
        }
    }

    async fn fetch(&self, file: &str, limit: u64) -> Result<Option<Vec<u8>>, DirectorError> {
        match &self.source {
            Source::Memory(files) => Ok(files.get(file).cloned()),
            Source::Http { base, client } => {
                let url = format!("{base}/{file}");
                let response = client.get(&url).send().await.map_err(repo_err)?;
                match response.status().as_u16() {
                    200 => {}
                    403 | 404 => return Ok(None),
                    status => return Err(repo_err(format!("{url}: HTTP {status}"))),
                }
                if response.content_length().is_some_and(|n| n > limit) {
                    return Err(repo_err(format!("{url}: larger than {limit} bytes")));
                }
                let bytes = response.bytes().await.map_err(repo_err)?;
                if bytes.len() as u64 > limit {
                    return Err(repo_err(format!("{url}: larger than {limit} bytes")));
                }
                Ok(Some(bytes.to_vec()))
            }
        }
    }

    /// The verified target entry of image `name`, or `None` if the Image repository has no
    /// such image (TUF client workflow and delegation search, at `now`).
    pub async fn lookup(
        &self,
        name: &str,
        now: UtcTime,
    ) -> Result<Option<TargetFile>, DirectorError> {
        let root = self.root.lock().map_err(|_| repo_err("poisoned"))?.clone();
        let mut refresh =
            Refresh::<ImageRepo>::new(&Raw::new(root), now, Limits::default()).map_err(repo_err)?;
        refresh.find(name);
        // The Director keeps nothing between lookups but the newest root.
        loop {
            let answer = match refresh.next() {
                Step::ReadKept(_) => None,
                Step::Fetch { file, max_len } => self.fetch(&file.file_name(), max_len).await?,
                Step::Done => break,
            };
            if let Some(accepted) = refresh.feed(answer).map_err(repo_err)?
                && accepted.file.role() == "root"
            {
                *self.root.lock().map_err(|_| repo_err("poisoned"))? = accepted.bytes.to_vec();
            }
        }
        Ok(refresh.target(name).map(|t| t.info().clone()))
    }
}
