//! Limits against resource exhaustion, on the real servers over real TLS: a client that
//! trickles its headers is cut off, connections held half-open do not keep a normal client
//! out, a flood of unauthenticated requests adds a bounded number of rows to the event log
//! (and lines to the Image repository's log), and unauthenticated uploads of 60 MB are
//! refused before their bodies cost memory. The attacks themselves are in
//! `uptane_tests::flood`; the attack suite runs them against a fleet too.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use uptane_tests::flood::{
    FLOOD_EVENT_KINDS, MAX_FLOOD_ROWS, UPLOADS_MEMORY_BOUND_KIB, addr, closed_within,
    follow_position, hold_half_open, partial_headers, security_events_including, tls,
    unauthenticated_flood, unauthenticated_uploads,
};
use uptane_tests::sim::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_cut_off_by_both_servers() {
    let mut fleet = Fleet::start_with(&["--header-timeout-secs", "1"]);
    fleet.restart_director_with(&["--header-timeout-secs", "1"], &[]);
    let config = tls(&fleet);
    for url in [fleet.director_url.clone(), fleet.image_url.clone()] {
        let mut slow = partial_headers(&addr(&url), Arc::clone(&config))
            .await
            .unwrap();
        // One more header byte now and then, never the end: still cut at the timeout
        // (a bounded wait, far above the 1 s configured; no timing is asserted).
        let trickle = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if slow.write_all(b"x").await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
        assert!(
            closed_within(&mut slow, Duration::from_secs(20)).await,
            "{url} kept a connection whose headers never ended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_half_open_connections_do_not_keep_a_normal_client_out() {
    let fleet = Fleet::start();
    let client = fleet.https_client();
    for url in [fleet.director_url.clone(), fleet.image_url.clone()] {
        let held = hold_half_open(&fleet, &url, 500).await.unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            client.get(format!("{url}/healthz")).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{url} did not answer with 500 connections held"))
        .unwrap();
        assert_eq!(answer.status(), 200, "{url}");
        drop(held);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unauthenticated_requests_add_a_bounded_number_of_rows() {
    let fleet = Fleet::start();
    let before = follow_position(&fleet).await.unwrap();
    let not_refused = unauthenticated_flood(&fleet, 10_000).await;
    assert!(not_refused.is_empty(), "{not_refused:?}");
    let added = security_events_including(&fleet, before, &FLOOD_EVENT_KINDS)
        .await
        .unwrap();
    let kinds: std::collections::BTreeSet<&str> =
        added.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        added.len() <= MAX_FLOOD_ROWS,
        "{} rows for 10,000 refusals: {kinds:?}",
        added.len()
    );
    for kind in FLOOD_EVENT_KINDS {
        assert!(kinds.contains(kind), "no {kind} event: {kinds:?}");
    }
    // Nothing the requests chose (their bodies) reached the log.
    assert!(
        added
            .iter()
            .all(|e| !e["detail"].as_str().unwrap_or_default().contains("xxxx")),
        "{added:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_60_mb_uploads_are_refused_before_their_bodies_cost_memory() {
    let fleet = Fleet::start();
    for (name, before, after) in unauthenticated_uploads(&fleet).await.unwrap() {
        assert!(
            after <= before + UPLOADS_MEMORY_BOUND_KIB,
            "{name}: peak resident memory rose from {before} KiB to {after} KiB"
        );
    }
    // And the Image repository logs refusals once per kind and window, not per request.
    let client = fleet.https_client();
    let small = (0..1_000).map(|i| {
        let client = client.clone();
        let url = format!("{}/api/v1/metadata/targets", fleet.image_url);
        async move {
            let request = client.put(&url).body("{}");
            let request = if i % 2 == 0 {
                request
            } else {
                request.bearer_auth("forged")
            };
            assert_eq!(request.send().await.unwrap().status(), 401);
        }
    });
    futures_util::stream::iter(small)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let log = fleet.image_repo_log();
    let refused = log.lines().filter(|l| l.contains("upload refused")).count();
    assert!(
        refused <= 8,
        "{refused} log lines for 1,008 refusals:\n{log}"
    );
}
