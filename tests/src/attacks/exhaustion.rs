//! Attacks on the servers' resources by someone who holds no key at all: half-open
//! connections, floods of refused requests, large uploads without a token, downloads held
//! unread or read at a trickle. Each is run against the running fleet (`crate::flood` has
//! the attacks); each ends with the vehicle updating normally.

use super::{Scenario, blocking, scenario};
use crate::flood;

/// The attacks of this module, in the order run.
pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "a flood of 10,000 unauthenticated requests to the Director",
            "the network (no key, no credential)",
            "every one refused (401); a bounded number of event-log rows, nothing the requests chose in them; then updates",
            |w| {
                let fleet = &w.fleet;
                let (not_refused, added) = blocking(async {
                    let before = flood::follow_position(fleet).await?;
                    let not_refused = flood::unauthenticated_flood(fleet, 10_000).await;
                    let added =
                        flood::security_events_including(fleet, before, &flood::FLOOD_EVENT_KINDS)
                            .await?;
                    Ok::<_, String>((not_refused, added))
                })?;
                if !not_refused.is_empty() {
                    return Err(format!("not refused: {not_refused:?}"));
                }
                if added.len() > flood::MAX_FLOOD_ROWS {
                    return Err(format!("{} event-log rows", added.len()));
                }
                if added
                    .iter()
                    .any(|e| e["detail"].as_str().unwrap_or_default().contains("xxxx"))
                {
                    return Err("a request's body reached the event log".into());
                }
                Ok(format!(
                    "10,000 refused with 401; {} event-log rows; {}",
                    added.len(),
                    w.recover()?
                ))
            },
        ),
        scenario(
            "3,000 requests with made-up methods and paths, each different, to grow the Director's metrics",
            "the network (no key)",
            "a handful of new request series at most (route templates, OTHER, status codes); then updates",
            |w| {
                let before = flood::request_series(&w.fleet.director_metrics());
                let answered = blocking(async {
                    Ok::<_, String>(flood::made_up_requests(&w.fleet, 3_000).await)
                })?;
                let after = flood::request_series(&w.fleet.director_metrics());
                if after > before + 10 {
                    return Err(format!("{before} request series grew to {after}"));
                }
                Ok(format!(
                    "{answered} answered; request series {before} -> {after}; {}",
                    w.recover()?
                ))
            },
        ),
        scenario(
            "500 half-open connections to each server (slowloris)",
            "the network (no key)",
            "the car updates while they are held",
            |w| {
                // The connections stay open (their runtime is kept) while the car runs.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut held = Vec::new();
                for url in [w.fleet.director_url.clone(), w.fleet.image_url.clone()] {
                    held.push(
                        runtime
                            .block_on(flood::hold_half_open(&w.fleet, &url, 500))
                            .map_err(|e| format!("{url}: {e}"))?,
                    );
                }
                let recovered = w.recover()?;
                drop(held);
                Ok(format!("1,000 connections held; {recovered}"))
            },
        ),
        scenario(
            "eight unauthenticated 60 MB uploads to each server at once",
            "the network (no key)",
            "refused before the body is read: peak memory rises by at most 16 MiB (2 MiB per upload); then updates",
            |w| {
                let measured = blocking(flood::unauthenticated_uploads(&w.fleet))?;
                let mut seen = Vec::new();
                for (name, before, after) in measured {
                    if after > before + flood::UPLOADS_MEMORY_BOUND_KIB {
                        return Err(format!(
                            "{name}: peak memory rose from {before} KiB to {after} KiB"
                        ));
                    }
                    // Signed: the kernel's high-water mark is sampled lazily and may read a
                    // little lower the second time.
                    seen.push(format!("{name} {:+} KiB", after as i64 - before as i64));
                }
                Ok(format!("{}; {}", seen.join(", "), w.recover()?))
            },
        ),
        scenario(
            "eight HTTP/2 connections downloading an 8 MiB image on 31 streams each that read nothing, and on one each that reads it whole",
            "the network (no key)",
            "the Image repository reads ahead only what each connection's allowance holds (peak memory rises by at most 4 MiB per connection), and another download on each connection, read as it comes, still finishes whole; then updates",
            |w| {
                let seen = blocking(flood::unread_http2_downloads(&w.fleet))?;
                let bound =
                    flood::UNREAD_DOWNLOAD_CONNECTIONS as u64 * flood::UNREAD_DOWNLOADS_BOUND_KIB;
                if seen.peak_kib > seen.before_kib + bound {
                    return Err(format!(
                        "peak memory rose from {} KiB to {} KiB (bound {bound} KiB)",
                        seen.before_kib, seen.peak_kib
                    ));
                }
                Ok(format!(
                    "{} streams held; image-repo {:+} KiB; 8 downloads read whole beside them; {}",
                    seen.unread,
                    seen.peak_kib as i64 - seen.before_kib as i64,
                    w.recover()?
                ))
            },
        ),
        scenario(
            "four HTTP/2 connections reading an 8 MiB image from the Image repository at 1 KiB/s each, a window update a second (a slow-read slowloris), and beside them an image uploaded at 20 bytes/s",
            "the network (no key); an upload token for the upload",
            "each connection dropped soon after its first idle timeout (60 s), under the minimum of 4 KiB/s, not held while bytes trickle; the upload refused (408) then; then updates",
            |w| {
                let grace = service_runtime::http::ServerLimits::default().idle_timeout;
                let limit = grace * 2;
                let (downloads, upload) = blocking(async {
                    let (downloads, upload) = futures_util::future::join(
                        flood::trickled_downloads(&w.fleet, limit),
                        flood::trickled_upload(&w.fleet, limit),
                    )
                    .await;
                    Ok::<_, String>((downloads?, upload?))
                })?;
                for download in &downloads {
                    // The server's clock starts a little before ours, and looks each second.
                    if download.held < grace - std::time::Duration::from_secs(1) {
                        return Err(format!(
                            "dropped after {:?}, within the grace period",
                            download.held
                        ));
                    }
                }
                let (status, error, took) = upload;
                if status != http::StatusCode::REQUEST_TIMEOUT
                    || !error.contains("upload slower than")
                {
                    return Err(format!(
                        "the trickled upload was answered {status}: {error}"
                    ));
                }
                let held: Vec<_> = downloads
                    .iter()
                    .map(|d| format!("{} KiB in {} s", d.read / 1024, d.held.as_secs()))
                    .collect();
                Ok(format!(
                    "dropped: {}; the upload refused after {} s: {status}; {}",
                    held.join(", "),
                    took.as_secs(),
                    w.recover()?
                ))
            },
        ),
    ]
}
