//! The Director's link to PostgreSQL, attacked and broken: what crosses it is TLS (a sniffer
//! on it sees no VIN and no statement), a database that stops answering makes the Director
//! answer 503 with `Retry-After` (and `/healthz` too, so a load balancer takes the replica
//! out) until it is back, when the Director connects again by itself, and a row lock not
//! granted within `lock_timeout` is a 503 that changed nothing. Each test runs on PostgreSQL
//! whichever engine the suite is given (`DIRECTOR_TEST_POSTGRES`, or a throwaway cluster).

#![allow(clippy::unwrap_used)]

use director::db::Database;
use uptane_tests::blocking;
use uptane_tests::load::Car;
use uptane_tests::postgres::Postgres;
use uptane_tests::proxy::LinkProxy;
use uptane_tests::sim::{Fleet, LIMIT, wait_until};

/// A fleet whose Director is on a new database of `postgres`; the database's URL.
fn fleet_on(postgres: &Postgres) -> (Fleet, String) {
    let database = postgres.fresh();
    let url = database.to_arg();
    (Fleet::start_on_database(Some(database)), url)
}

/// Points the fleet's Director at `url` (its `DIR/database`) and restarts it.
fn reconnect_director(fleet: &mut Fleet, url: &str) {
    std::fs::write(Database::file_in(&fleet.path("director")), url).unwrap();
    fleet.restart_director();
}

/// `host:port` of a `postgres://user@host:port/db…` URL.
fn server_of(url: &str) -> String {
    let after_user = url.split_once('@').unwrap().1;
    after_user.split('/').next().unwrap().to_string()
}

/// Posts `car`'s next manifest to the Director: the status, `Retry-After` and the body.
async fn post_manifest(
    client: &reqwest::Client,
    fleet: &Fleet,
    car: &Car,
    body: Vec<u8>,
) -> (u16, Option<String>, String) {
    answer(
        car.post_manifest(client, &fleet.director_url, body)
            .await
            .unwrap(),
    )
    .await
}

async fn answer(response: reqwest::Response) -> (u16, Option<String>, String) {
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (status, retry, response.text().await.unwrap())
}

async fn get(client: &reqwest::Client, url: String, token: &str) -> (u16, Option<String>, String) {
    answer(client.get(url).bearer_auth(token).send().await.unwrap()).await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_link_carries_nothing_in_clear_and_a_lost_database_is_503_until_it_is_back() {
    let postgres = Postgres::server();
    let (mut fleet, url) = fleet_on(&postgres);
    let server = server_of(&url);
    let link = LinkProxy::start(&server).unwrap();
    reconnect_director(&mut fleet, &url.replacen(&server, link.addr(), 1));
    let client = fleet.https_client();
    let mut car = Car::new("postgres-link", 0);

    // A sniffer on the database link during a registration and a manifest.
    link.tap();
    blocking(async {
        car.register(&client, &fleet.director_url, &fleet.token)
            .await
            .unwrap();
        let body = car.manifest("postgres-link");
        let (status, _, text) = post_manifest(&client, &fleet, &car, body).await;
        assert_eq!(status, 200, "{text}");
    });
    let captured = link.captured();
    link.untap();
    assert!(captured.len() > 4096, "{} bytes crossed", captured.len());
    for clear in [car.vin.as_str().as_bytes(), b"INSERT", b"vehicles"] {
        assert!(
            !contains(&captured, clear),
            "{:?} crossed the database link in clear",
            String::from_utf8_lossy(clear)
        );
    }

    // The database stops answering: every connection reset, new ones refused.
    link.set_target("127.0.0.1:1");
    link.cut();
    blocking(async {
        let (status, retry, text) = get(
            &client,
            format!("{}/healthz", fleet.director_url),
            &fleet.token,
        )
        .await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{text}");
        let (status, retry, text) = get(
            &client,
            format!("{}/api/v1/vehicles", fleet.director_url),
            &fleet.token,
        )
        .await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{text}");
        assert!(text.contains("the database does not answer"), "{text}");
        let body = car.manifest("postgres-link");
        let (status, retry, text) = post_manifest(&client, &fleet, &car, body).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{text}");
    });

    // Back: the Director connects again by itself, and the vehicle goes on.
    link.set_target(&server);
    let healthy = || {
        blocking(async {
            get(
                &client,
                format!("{}/healthz", fleet.director_url),
                &fleet.token,
            )
            .await
            .0 == 200
        })
    };
    assert!(wait_until(LIMIT, healthy), "the Director did not reconnect");
    blocking(async {
        let body = car.manifest("postgres-link");
        let (status, _, text) = post_manifest(&client, &fleet, &car, body).await;
        assert_eq!(status, 200, "{text}");
    });
}

#[test]
fn a_row_lock_not_granted_in_time_is_503_and_changes_nothing() {
    let postgres = Postgres::server();
    let (mut fleet, url) = fleet_on(&postgres);
    // A short lock wait, as the connection string may set it (the default is 10 s).
    let separator = if url.contains('?') { '&' } else { '?' };
    reconnect_director(
        &mut fleet,
        &format!("{url}{separator}options=-c%20lock_timeout%3D300ms"),
    );
    let client = fleet.https_client();
    let mut car = Car::new("postgres-lock", 0);
    blocking(async {
        car.register(&client, &fleet.director_url, &fleet.token)
            .await
            .unwrap();
    });
    // Another session (another replica's transaction, an operator's psql) holds the
    // vehicle's row.
    let mut holder = director::pg::PgTarget::new(&url)
        .unwrap()
        .connect()
        .unwrap();
    holder.batch_execute("BEGIN").unwrap();
    holder
        .execute(
            "SELECT 1 FROM vehicles WHERE vin = $1 FOR UPDATE",
            &[&car.vin.as_str()],
        )
        .unwrap();
    let body = car.manifest("postgres-lock");
    let refused = blocking(post_manifest(&client, &fleet, &car, body.clone()));
    assert_eq!(
        (refused.0, refused.1.as_deref()),
        (503, Some("1")),
        "{}",
        refused.2
    );
    assert!(refused.2.contains("busy"), "{}", refused.2);
    holder.batch_execute("COMMIT").unwrap();
    // Nothing of the refused request was kept: the same manifest (its nonces unspent) is
    // accepted now.
    let (status, _, text) = blocking(post_manifest(&client, &fleet, &car, body));
    assert_eq!(status, 200, "{text}");
}
