//! What the operator dashboard (`/ui`) is served with and the API calls only it and
//! `director overview` make: the fleet at a glance, vehicle search, events by kind.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn get(fleet: &Fleet, uri: &str) -> axum::response::Response {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    fleet.app.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_policy_that_runs_only_its_own_script() {
    let fleet = fleet();
    for (uri, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        // No token: the pages hold no data.
        let response = get(&fleet, uri).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let headers = response.headers();
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{uri}"
        );
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{uri}: {policy}");
        }
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    }
    let page = axum::body::to_bytes(get(&fleet, "/ui").await.into_body(), 1 << 20)
        .await
        .unwrap();
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "nothing inline"
    );
    // Server data reaches the page as text only.
    let script = axum::body::to_bytes(get(&fleet, "/ui/app.js").await.into_body(), 1 << 20)
        .await
        .unwrap();
    let script = String::from_utf8(script.to_vec()).unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    assert_eq!(
        get(&fleet, "/ui/other.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_overview_counts_the_fleet_and_search_and_kind_narrow_the_listings() {
    let fleet = fleet();
    let mut cars = Vec::new();
    for (i, vin) in ["VIN-ALPHA-1", "VIN-ALPHA-2", "VIN-BRAVO-1"]
        .iter()
        .enumerate()
    {
        let mut car = fleet.register(vin, 10 + 3 * i as u8).await;
        let factory = car.factory();
        assert_eq!(fleet.post_manifest(&car, factory).await.0, StatusCode::OK);
        cars.push(car);
    }
    let (status, _) = fleet
        .operator(
            "POST",
            "/api/v1/assignments",
            json!({"image": "brake-2.bin", "vins": ["VIN-ALPHA-1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, o) = fleet.operator("GET", "/api/v1/overview", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert_eq!(
        (o["vehicles"].as_i64(), o["ecus"].as_i64()),
        (Some(3), Some(9))
    );
    assert_eq!(o["assignments"]["pending"], 1);
    assert_eq!(o["success_rate"], Value::Null, "no outcome yet");
    assert_eq!(o["campaigns"]["running"], 0);
    let brake = o["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["filename"] == "brake-1.bin")
        .unwrap();
    assert_eq!(brake["ecus"], 3);
    let (status, _, _) = fleet.send("GET", "/api/v1/overview", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let vins = |rows: &Value| -> Vec<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|v| v["vin"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, found) = fleet
        .operator("GET", "/api/v1/vehicles?search=alpha", Value::Null)
        .await;
    assert_eq!(vins(&found), ["VIN-ALPHA-2", "VIN-ALPHA-1"]);
    // Wildcards are only themselves.
    let (_, found) = fleet
        .operator("GET", "/api/v1/vehicles?search=%25", Value::Null)
        .await;
    assert!(vins(&found).is_empty());
    let (_, found) = fleet
        .operator("GET", "/api/v1/vehicles?search=VIN_", Value::Null)
        .await;
    assert!(vins(&found).is_empty());
    let (status, refused) = fleet
        .operator("GET", "/api/v1/vehicles?search=", Value::Null)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");

    let (_, events) = fleet
        .operator(
            "GET",
            "/api/v1/events?kind=vehicle_reg&limit=100",
            Value::Null,
        )
        .await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["vehicle_registered"; 3]);
    let (_, events) = fleet
        .operator("GET", "/api/v1/events?kind=%25", Value::Null)
        .await;
    assert!(events.as_array().unwrap().is_empty());
}
