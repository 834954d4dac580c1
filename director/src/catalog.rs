//! What the Image repository holds, read and verified with `uptane-core` as any TUF client
//! would: the Director assigns only images the Image repository vouches for.

use std::collections::HashMap;
use std::sync::Mutex;

use uptane_core::metadata::{TargetFile, metadata_file_name};
use uptane_core::time::UtcTime;
use uptane_core::trusted::{ImageRepo, Limits, SearchStep, TargetSearch, TrustedSet};
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
    /// (e.g. `http://host:port/metadata`), trusting `pinned_root`.
    pub fn http(base: &str, pinned_root: Vec<u8>) -> Result<Self, DirectorError> {
        let client = reqwest::Client::builder()
            .no_proxy()
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

    async fn need(&self, file: &str, limit: u64) -> Result<Vec<u8>, DirectorError> {
        self.fetch(file, limit)
            .await?
            .ok_or_else(|| repo_err(format!("{file} is missing")))
    }

    /// The verified target entry of image `name`, or `None` if the Image repository has no
    /// such image (TUF client workflow and delegation search, at `now`).
    pub async fn lookup(
        &self,
        name: &str,
        now: UtcTime,
    ) -> Result<Option<TargetFile>, DirectorError> {
        let limits = Limits::default();
        let root = self.root.lock().map_err(|_| repo_err("poisoned"))?.clone();
        let mut set =
            TrustedSet::<ImageRepo>::new(&Raw::new(root), now, limits).map_err(repo_err)?;
        for _ in 0..limits.max_root_rotations {
            let next = set.root().common.version + 1;
            let Some(bytes) = self
                .fetch(&format!("{next}.root.json"), limits.root)
                .await?
            else {
                break;
            };
            set.update_root(&Raw::new(bytes)).map_err(repo_err)?;
        }
        *self.root.lock().map_err(|_| repo_err("poisoned"))? = set.root().as_bytes().to_vec();
        let timestamp = self.need("timestamp.json", limits.timestamp).await?;
        set.update_timestamp(&Raw::new(timestamp))
            .map_err(repo_err)?;
        let request = set.snapshot_request().map_err(repo_err)?;
        let snapshot = self
            .need(
                &metadata_file_name("snapshot", request.version),
                request.max_length,
            )
            .await?;
        set.update_snapshot(&Raw::new(snapshot)).map_err(repo_err)?;
        let mut search = TargetSearch::new(name);
        for _ in 0..=limits.max_delegations + 1 {
            match search.step(&set) {
                SearchStep::Load { role, delegator } => {
                    let request = set.targets_request(&role).map_err(repo_err)?;
                    let bytes = self
                        .need(
                            &metadata_file_name(&role, request.version),
                            request.max_length,
                        )
                        .await?;
                    set.update_delegated_targets(&Raw::new(bytes), &role, &delegator)
                        .map_err(repo_err)?;
                }
                SearchStep::Found(target) => return Ok(Some(target.info().clone())),
                SearchStep::NotFound => return Ok(None),
            }
        }
        Ok(None)
    }
}
