//! How a vehicle proves who it is: a client certificate bound to its VIN at registration
//! (checked by fingerprint; the TLS handshake proved the key), or its bearer credential, a
//! random secret stored as a hash that expires, is renewed by the vehicle, and is revoked
//! and re-issued by an operator.
//!
//! A renewed credential does not replace the current one until the vehicle first uses it:
//! a vehicle that loses the answer to its renewal (a crash, a cut link) still holds a
//! credential that works.

use crate::params;
use crate::sql::Conn;
use chrono::Duration;
use serde::Serialize;
use service_runtime::tls::Fingerprint;
use uptane_core::error::AttackKind;
use uptane_core::hash::sha256_hex;
use uptane_core::ids::Vin;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use super::now_text;
use super::refusals::RefusalLog;
use super::tokens::random_token;
use crate::error::DirectorError;

/// What a vehicle request presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VehicleAuth {
    /// The `Authorization: Bearer` credential, if any.
    pub bearer: Option<String>,
    /// The fingerprint of the client certificate the TLS handshake proved, if any.
    pub certificate: Option<Fingerprint>,
}

/// A credential just issued: the secret (shown once) and its validity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCredential {
    /// The secret.
    pub credential: String,
    /// When it was issued.
    pub issued_at: String,
    /// When it stops working.
    pub expires_at: String,
}

impl IssuedCredential {
    fn new(now: UtcTime, lifetime: Duration) -> Result<Self, DirectorError> {
        if lifetime < Duration::minutes(1) {
            return Err(DirectorError::BadRequest(
                "a vehicle credential lives at least a minute".into(),
            ));
        }
        Ok(Self {
            credential: random_token("dvc")?,
            issued_at: now_text(now),
            expires_at: now_text(now + lifetime),
        })
    }

    fn sha256(&self) -> String {
        sha256_hex(self.credential.as_bytes())
    }
}

/// Stores a new vehicle with its first credential and, if given, its bound certificate
/// (refused if that certificate is another vehicle's).
pub(crate) fn insert(
    conn: &Conn,
    vin: &Vin,
    certificate: Option<Fingerprint>,
    lifetime: Duration,
    now: UtcTime,
) -> Result<IssuedCredential, DirectorError> {
    let issued = IssuedCredential::new(now, lifetime)?;
    if let Some(fingerprint) = certificate {
        refuse_bound_elsewhere(conn, vin, fingerprint)?;
    }
    conn.execute(
        "INSERT INTO vehicles (vin, credential_sha256, created_at, credential_issued_at,
                               credential_expires_at, tls_fingerprint)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
        params![
            vin.as_str(),
            issued.sha256(),
            issued.issued_at,
            issued.expires_at,
            certificate.map(|f| f.to_string())
        ],
    )?;
    Ok(issued)
}

/// The vehicle the certificate with `fingerprint` is bound to, if any.
fn certificate_owner(
    conn: &Conn,
    fingerprint: Fingerprint,
) -> Result<Option<String>, DirectorError> {
    Ok(conn.query_opt(
        "SELECT vin FROM vehicles WHERE tls_fingerprint = ?1",
        params![fingerprint.to_string()],
        |r| r.get(0),
    )?)
}

fn refuse_bound_elsewhere(
    conn: &Conn,
    vin: &Vin,
    fingerprint: Fingerprint,
) -> Result<(), DirectorError> {
    match certificate_owner(conn, fingerprint)? {
        Some(owner) if owner != vin.as_str() => Err(DirectorError::Conflict(format!(
            "client certificate {fingerprint} is already bound to another vehicle"
        ))),
        _ => Ok(()),
    }
}

/// Why a vehicle request is refused, as its security event says.
struct Why<'a> {
    actor: &'a str,
    detail: &'a str,
    attack: Option<AttackKind>,
}

/// A refusal, recorded as a security event (through the refusal log) before it is returned.
fn refuse(
    conn: &Conn,
    vin: &Vin,
    why: Why<'_>,
    error: DirectorError,
    now: UtcTime,
    log: &RefusalLog,
) -> Result<(), DirectorError> {
    let mut event =
        NewEvent::security("vehicle_auth_refused", why.actor, why.detail).vin(vin.as_str());
    if let Some(attack) = why.attack {
        event = event.attack(attack);
    }
    event.record_refusal(conn, now, log)?;
    Err(error)
}

/// A vehicle's credential columns, as the common-case check reads them (and the cache keeps
/// them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRow {
    bound: Option<String>,
    current: Option<String>,
    revoked: Option<String>,
    expires: Option<String>,
}

/// Vehicle `vin`'s credential columns, if it is registered.
pub fn auth_row(conn: &Conn, vin: &Vin) -> Result<Option<AuthRow>, DirectorError> {
    Ok(conn.query_opt(
        "SELECT tls_fingerprint, credential_sha256, credential_revoked_at, credential_expires_at
             FROM vehicles WHERE vin = ?1",
        params![vin.as_str()],
        |r| {
            Ok(AuthRow {
                bound: r.get(0)?,
                current: r.get(1)?,
                revoked: r.get(2)?,
                expires: r.get(3)?,
            })
        },
    )?)
}

impl AuthRow {
    /// Whether the request certainly comes from this vehicle and [`authorize`] would write
    /// nothing: its bound certificate (with no credential, or the current one), or, for a
    /// vehicle without a binding, its current credential, live. `false` leaves the decision,
    /// and any refusal or take-over it records, to [`authorize`] on the writer.
    pub fn allows(&self, auth: &VehicleAuth, now: UtcTime) -> bool {
        let bearer_is_current = auth
            .bearer
            .as_ref()
            .map(|b| self.current.as_deref() == Some(sha256_hex(b.as_bytes()).as_str()));
        match (auth.certificate, &self.bound) {
            (Some(shown), Some(bound)) => {
                shown.to_string() == *bound && bearer_is_current.unwrap_or(true)
            }
            (None, None) => {
                bearer_is_current == Some(true)
                    && self.revoked.is_none()
                    && self.expires.as_ref().is_none_or(|e| *e > now_text(now))
            }
            _ => false,
        }
    }
}

/// Checks that the request comes from vehicle `vin`. A vehicle with a bound certificate must
/// show it (a bearer credential alone is refused, so a credential copied off the vehicle is
/// useless without its TLS key); one without a binding shows its live bearer credential. A
/// certificate or credential of another vehicle is refused with 403, anything else with
/// 401; each refusal is a security event.
pub fn authorize(
    conn: &Conn,
    vin: &Vin,
    auth: &VehicleAuth,
    now: UtcTime,
    log: &RefusalLog,
) -> Result<(), DirectorError> {
    // Every credential change of a vehicle locks its row first (on PostgreSQL, where
    // replicas write at once): what is read next is current until the change commits.
    conn.lock_row("vehicles", "vin", vin.as_str())?;
    let bound: Option<String> = conn
        .query_opt(
            "SELECT tls_fingerprint FROM vehicles WHERE vin = ?1",
            params![vin.as_str()],
            |r| r.get(0),
        )?
        .flatten();
    if let Some(fingerprint) = auth.certificate {
        if bound.as_deref() == Some(fingerprint.to_string().as_str()) {
            // The certificate proves the vehicle; a renewed credential it sends along still
            // takes over, so the one it replaced stops working.
            if let Some(bearer) = &auth.bearer {
                take_over_if_renewed(conn, vin, bearer, now)?;
            }
            return Ok(());
        }
        // Not this vehicle's: another vehicle's, or bound to none.
        match certificate_owner(conn, fingerprint)? {
            Some(owner) => {
                let detail = format!("the client certificate of {owner} was used for {vin}");
                return refuse(
                    conn,
                    vin,
                    Why {
                        actor: &format!("vehicle:{owner}"),
                        detail: &detail,
                        attack: Some(AttackKind::WrongVehicle),
                    },
                    DirectorError::Forbidden(format!(
                        "this client certificate is bound to another vehicle, not {vin}"
                    )),
                    now,
                    log,
                );
            }
            None if bound.is_some() => {
                let detail = format!("a client certificate not bound to {vin}: {fingerprint}");
                return refuse(
                    conn,
                    vin,
                    Why {
                        actor: "unknown",
                        detail: &detail,
                        attack: Some(AttackKind::WrongVehicle),
                    },
                    DirectorError::Forbidden(format!(
                        "this client certificate is not the one bound to {vin}"
                    )),
                    now,
                    log,
                );
            }
            None => {}
        }
    } else if bound.is_some() {
        return refuse(
            conn,
            vin,
            Why {
                actor: "unknown",
                detail: "no client certificate, for a vehicle with one bound",
                attack: None,
            },
            DirectorError::Unauthorized(format!(
                "{vin} authenticates with its bound client certificate; a credential alone is \
                 not enough"
            )),
            now,
            log,
        );
    }
    let Some(bearer) = &auth.bearer else {
        return refuse(
            conn,
            vin,
            Why {
                actor: "unknown",
                detail: "no credential",
                attack: None,
            },
            DirectorError::Unauthorized(
                "missing credential: a bearer token or the vehicle's client certificate".into(),
            ),
            now,
            log,
        );
    };
    let sha256 = sha256_hex(bearer.as_bytes());
    type Row = (String, bool, Option<String>, Option<String>, Option<String>);
    let row: Option<Row> = conn.query_opt(
        "SELECT vin, credential_sha256 = ?1, credential_revoked_at, credential_expires_at,
                    next_credential_expires_at
             FROM vehicles WHERE credential_sha256 = ?1 OR next_credential_sha256 = ?1",
        params![&sha256],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let Some((owner, current, revoked, expires, next_expires)) = row else {
        return refuse(
            conn,
            vin,
            Why {
                actor: "unknown",
                detail: "invalid vehicle credential",
                attack: None,
            },
            DirectorError::Unauthorized("invalid vehicle credential".into()),
            now,
            log,
        );
    };
    let actor = format!("vehicle:{owner}");
    if owner != vin.as_str() {
        let detail = format!("tried to access vehicle {vin}");
        NewEvent::security("cross_vehicle_access", &actor, &detail)
            .vin(&owner)
            .attack(AttackKind::WrongVehicle)
            .record_refusal(conn, now, log)?;
        return Err(DirectorError::Forbidden(format!(
            "this credential belongs to another vehicle, not {vin}"
        )));
    }
    if revoked.is_some() {
        return refuse(
            conn,
            vin,
            Why {
                actor: &actor,
                detail: "revoked vehicle credential",
                attack: None,
            },
            DirectorError::Unauthorized(format!("the credential of {vin} was revoked")),
            now,
            log,
        );
    }
    let expires = if current { expires } else { next_expires };
    if let Some(expires) = expires.filter(|e| *e <= now_text(now)) {
        return refuse(
            conn,
            vin,
            Why {
                actor: &actor,
                detail: "expired vehicle credential",
                attack: None,
            },
            DirectorError::Unauthorized(format!("the credential of {vin} expired at {expires}")),
            now,
            log,
        );
    }
    if !current {
        take_over(conn, vin, now)?;
    }
    Ok(())
}

/// When `bearer` is `vin`'s renewed credential, not yet in use: it takes over.
fn take_over_if_renewed(
    conn: &Conn,
    vin: &Vin,
    bearer: &str,
    now: UtcTime,
) -> Result<(), DirectorError> {
    let renewed = conn
        .query_opt(
            "SELECT 1 FROM vehicles WHERE vin = ?1 AND next_credential_sha256 = ?2
                AND credential_revoked_at IS NULL AND next_credential_expires_at > ?3",
            params![vin.as_str(), sha256_hex(bearer.as_bytes()), now_text(now)],
            |_| Ok(()),
        )?
        .is_some();
    if renewed {
        take_over(conn, vin, now)?;
    }
    Ok(())
}

/// The vehicle stored its renewed credential and used it: it takes over, the old one stops.
fn take_over(conn: &Conn, vin: &Vin, now: UtcTime) -> Result<(), DirectorError> {
    conn.execute(
        "UPDATE vehicles SET credential_sha256 = next_credential_sha256,
                credential_expires_at = next_credential_expires_at,
                credential_issued_at = ?2,
                next_credential_sha256 = NULL, next_credential_expires_at = NULL
         WHERE vin = ?1 AND next_credential_sha256 IS NOT NULL",
        params![vin.as_str(), now_text(now)],
    )?;
    NewEvent::info(
        "vehicle_credential_renewed",
        &format!("vehicle:{vin}"),
        "the renewed credential took over",
    )
    .vin(vin.as_str())
    .record(conn, now)?;
    Ok(())
}

/// A renewed credential for an authorized vehicle, valid for `lifetime`; it takes over
/// when the vehicle first uses it (asking again replaces an unused one).
pub fn renew(
    conn: &Conn,
    vin: &Vin,
    lifetime: Duration,
    now: UtcTime,
) -> Result<IssuedCredential, DirectorError> {
    let issued = IssuedCredential::new(now, lifetime)?;
    conn.lock_row("vehicles", "vin", vin.as_str())?;
    conn.execute(
        "UPDATE vehicles SET next_credential_sha256 = ?2, next_credential_expires_at = ?3
         WHERE vin = ?1 AND credential_revoked_at IS NULL",
        params![vin.as_str(), issued.sha256(), issued.expires_at],
    )?;
    Ok(issued)
}

fn require_vehicle(conn: &Conn, vin: &Vin) -> Result<(), DirectorError> {
    if super::exists(conn, "vehicles", "vin", vin.as_str())? {
        Ok(())
    } else {
        Err(DirectorError::NotFound(format!("no vehicle {vin}")))
    }
}

/// Revokes vehicle `vin`'s credential, any renewal of it, and its certificate binding:
/// every request from it is refused until an operator issues a new credential.
pub fn revoke(conn: &Conn, vin: &Vin, actor: &str, now: UtcTime) -> Result<(), DirectorError> {
    conn.lock_row("vehicles", "vin", vin.as_str())?;
    require_vehicle(conn, vin)?;
    conn.execute(
        "UPDATE vehicles SET credential_revoked_at = ?2, next_credential_sha256 = NULL,
                next_credential_expires_at = NULL, tls_fingerprint = NULL
         WHERE vin = ?1",
        params![vin.as_str(), now_text(now)],
    )?;
    NewEvent::security(
        "vehicle_credential_revoked",
        actor,
        "credential and certificate binding revoked",
    )
    .vin(vin.as_str())
    .record(conn, now)?;
    Ok(())
}

/// Issues vehicle `vin` a new credential (the old one, revoked or not, stops working) and
/// binds `certificate` if given; the operator hands the secret to the vehicle
/// (`primary-ecu set-credential`).
pub fn issue(
    conn: &mut Conn,
    vin: &Vin,
    certificate: Option<Fingerprint>,
    lifetime: Duration,
    actor: &str,
    now: UtcTime,
) -> Result<IssuedCredential, DirectorError> {
    let tx = conn.savepoint()?;
    tx.lock_row("vehicles", "vin", vin.as_str())?;
    require_vehicle(&tx, vin)?;
    if let Some(fingerprint) = certificate {
        refuse_bound_elsewhere(&tx, vin, fingerprint)?;
    }
    let issued = IssuedCredential::new(now, lifetime)?;
    tx.execute(
        "UPDATE vehicles SET credential_sha256 = ?2, credential_issued_at = ?3,
                credential_expires_at = ?4, credential_revoked_at = NULL,
                next_credential_sha256 = NULL, next_credential_expires_at = NULL,
                tls_fingerprint = COALESCE(?5, tls_fingerprint)
         WHERE vin = ?1",
        params![
            vin.as_str(),
            issued.sha256(),
            issued.issued_at,
            issued.expires_at,
            certificate.map(|f| f.to_string())
        ],
    )?;
    let detail = match certificate {
        Some(f) => format!(
            "new credential, expires {}; certificate {f} bound",
            issued.expires_at
        ),
        None => format!("new credential, expires {}", issued.expires_at),
    };
    NewEvent::info("vehicle_credential_issued", actor, &detail)
        .vin(vin.as_str())
        .record(&tx, now)?;
    tx.commit()?;
    Ok(issued)
}

/// A vehicle's credential as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    /// Where the next page starts (`before`).
    pub cursor: i64,
    /// The vehicle.
    pub vin: String,
    /// When its credential was issued.
    pub issued_at: Option<String>,
    /// When it stops working.
    pub expires_at: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// Whether a renewed credential waits for its first use.
    pub renewal_pending: bool,
    /// The fingerprint of the client certificate bound to it, if any.
    pub tls_fingerprint: Option<String>,
}

/// A page of the vehicles' credentials (or `vin`'s), the most recently registered vehicle
/// first; `since` keeps those issued from then on.
pub fn list(
    conn: &Conn,
    vin: Option<&Vin>,
    page: super::Page,
) -> Result<Vec<CredentialInfo>, DirectorError> {
    let mut query = page.query(
        "SELECT rowid, vin, credential_issued_at, credential_expires_at, credential_revoked_at,
                next_credential_sha256 IS NOT NULL, tls_fingerprint
         FROM vehicles WHERE",
        "rowid",
        "credential_issued_at",
    );
    if let Some(vin) = vin {
        query = query.filter("vin = ?", vin.as_str().to_string());
    }
    query.rows(conn, |r| {
        Ok(CredentialInfo {
            cursor: r.get(0)?,
            vin: r.get(1)?,
            issued_at: r.get(2)?,
            expires_at: r.get(3)?,
            revoked_at: r.get(4)?,
            renewal_pending: r.get(5)?,
            tls_fingerprint: r.get(6)?,
        })
    })
}

impl super::DirectorService {
    /// A renewed credential for an authorized vehicle, presenting `auth`. Authorized again
    /// on the writer, under the vehicle's row lock: a revocation or re-issue committed since
    /// the request was first authorized (by an operator, on another replica) wins, and the
    /// credential it replaced cannot renew itself past it.
    pub async fn renew_credential(
        &self,
        vehicle: &super::AuthorizedVehicle,
        auth: VehicleAuth,
    ) -> Result<IssuedCredential, DirectorError> {
        let (vin, lifetime) = (
            vehicle.vin().clone(),
            self.inner.policy.vehicle_credential_lifetime,
        );
        let log = std::sync::Arc::clone(&self.inner.refusals);
        let forget = vin.clone();
        self.write_vehicle(&forget, move |conn| {
            super::fault::point("renewal-before-authorize");
            authorize(conn, &vin, &auth, super::now(), &log)?;
            renew(conn, &vin, lifetime, super::now())
        })
        .await
    }

    /// An operator revokes vehicle `vin`'s credential and certificate binding.
    pub async fn revoke_credential(
        &self,
        actor: &super::Actor,
        vin: Vin,
    ) -> Result<(), DirectorError> {
        let actor = actor.as_str().to_string();
        let forget = vin.clone();
        self.write_vehicle(&forget, move |conn| {
            revoke(conn, &vin, &actor, super::now())
        })
        .await
    }

    /// An operator issues vehicle `vin` a new credential, binding `certificate` if given.
    pub async fn issue_credential(
        &self,
        actor: &super::Actor,
        vin: Vin,
        certificate: Option<Fingerprint>,
    ) -> Result<IssuedCredential, DirectorError> {
        let actor = actor.as_str().to_string();
        let lifetime = self.inner.policy.vehicle_credential_lifetime;
        let forget = vin.clone();
        self.write_vehicle(&forget, move |conn| {
            issue(conn, &vin, certificate, lifetime, &actor, super::now())
        })
        .await
    }

    /// The credentials of every vehicle, or of `vin`.
    pub async fn credentials(
        &self,
        vin: Option<Vin>,
        page: super::Page,
    ) -> Result<Vec<CredentialInfo>, DirectorError> {
        self.inner
            .db
            .read(move |conn| list(conn, vin.as_ref(), page))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn at(text: &str) -> UtcTime {
        uptane_core::time::parse_expires(text).unwrap()
    }

    fn bearer(credential: &IssuedCredential) -> VehicleAuth {
        VehicleAuth {
            bearer: Some(credential.credential.clone()),
            certificate: None,
        }
    }

    fn fingerprint(n: u8) -> Fingerprint {
        hex::encode([n; 32]).parse().unwrap()
    }

    fn security_events(conn: &Conn) -> Vec<String> {
        conn.query(
            "SELECT detail FROM events WHERE severity = 'security' ORDER BY id",
            params![],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_credential_expires_is_renewed_at_first_use_and_is_revoked_and_reissued() {
        let db = Db::for_tests().unwrap();
        db.call_blocking(|conn| {
            let t0 = at("2030-01-01T00:00:00Z");
            let log = RefusalLog::new(Duration::seconds(60));
            let vin: Vin = "VIN-1".parse().unwrap();
            let first = insert(conn, &vin, None, Duration::days(10), t0)?;
            authorize(conn, &vin, &bearer(&first), t0, &log)?;
            let expired = authorize(conn, &vin, &bearer(&first), t0 + Duration::days(10), &log);
            assert!(
                matches!(&expired, Err(DirectorError::Unauthorized(m)) if m.contains("expired")),
                "{expired:?}"
            );

            // Renewed, but the answer was lost: the first still works, and a second renewal
            // replaces the lost one.
            let lost = renew(conn, &vin, Duration::days(10), t0 + Duration::days(8))?;
            authorize(conn, &vin, &bearer(&first), t0 + Duration::days(8), &log)?;
            let second = renew(conn, &vin, Duration::days(10), t0 + Duration::days(8))?;
            assert!(authorize(conn, &vin, &bearer(&lost), t0 + Duration::days(8), &log).is_err());
            authorize(conn, &vin, &bearer(&second), t0 + Duration::days(9), &log)?;
            // It took over: the first stops working, the second lives past the first's end.
            assert!(authorize(conn, &vin, &bearer(&first), t0 + Duration::days(9), &log).is_err());
            authorize(conn, &vin, &bearer(&second), t0 + Duration::days(12), &log)?;

            revoke(conn, &vin, "operator:x", t0 + Duration::days(12))?;
            let revoked = authorize(conn, &vin, &bearer(&second), t0 + Duration::days(12), &log);
            assert!(
                matches!(&revoked, Err(DirectorError::Unauthorized(m)) if m.contains("revoked")),
                "{revoked:?}"
            );
            let third = issue(
                conn,
                &vin,
                None,
                Duration::days(10),
                "operator:x",
                t0 + Duration::days(12),
            )?;
            authorize(conn, &vin, &bearer(&third), t0 + Duration::days(13), &log)?;
            assert!(
                authorize(conn, &vin, &bearer(&second), t0 + Duration::days(13), &log).is_err()
            );
            assert!(security_events(conn).len() >= 4);
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_bound_certificate_authenticates_only_its_own_vehicle() {
        let db = Db::for_tests().unwrap();
        db.call_blocking(|conn| {
            let t0 = at("2030-01-01T00:00:00Z");
            let log = RefusalLog::new(Duration::seconds(60));
            let (a, b): (Vin, Vin) = ("VIN-A".parse().unwrap(), "VIN-B".parse().unwrap());
            let a_credential = insert(conn, &a, Some(fingerprint(1)), Duration::days(10), t0)?;
            insert(conn, &b, Some(fingerprint(2)), Duration::days(10), t0)?;
            let cert = |n| VehicleAuth {
                bearer: None,
                certificate: Some(fingerprint(n)),
            };
            authorize(conn, &a, &cert(1), t0, &log)?;
            // B's certificate for A: 403, logged as the wrong vehicle.
            assert!(matches!(
                authorize(conn, &a, &cert(2), t0, &log),
                Err(DirectorError::Forbidden(_))
            ));
            // A certificate bound to nobody, for a vehicle with one bound: 403 even with the
            // right bearer credential.
            let stranger = VehicleAuth {
                bearer: Some(a_credential.credential.clone()),
                certificate: Some(fingerprint(3)),
            };
            assert!(matches!(
                authorize(conn, &a, &stranger, t0, &log),
                Err(DirectorError::Forbidden(_))
            ));
            // No certificate: a bound vehicle's credential alone is not enough (a copy of it
            // taken off the vehicle is useless without the TLS key).
            let alone = authorize(conn, &a, &bearer(&a_credential), t0, &log);
            assert!(
                matches!(&alone, Err(DirectorError::Unauthorized(m)) if m.contains("bound client certificate")),
                "{alone:?}"
            );
            // Renewed: the new credential, sent along with the certificate, takes over, and
            // the one it replaced stops working.
            let renewed = renew(conn, &a, Duration::days(10), t0)?;
            let both = |credential: &IssuedCredential| VehicleAuth {
                bearer: Some(credential.credential.clone()),
                certificate: Some(fingerprint(1)),
            };
            authorize(conn, &a, &both(&renewed), t0 + Duration::days(1), &log)?;
            let sha256: (String, Option<String>) = conn.query_row(
                "SELECT credential_sha256, next_credential_sha256 FROM vehicles WHERE vin = 'VIN-A'",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            assert_eq!(sha256, (renewed.sha256(), None));
            // Without a binding (A's unbound by hand), the bearer alone works.
            conn.execute("UPDATE vehicles SET tls_fingerprint = NULL WHERE vin = 'VIN-A'", params![])?;
            authorize(conn, &a, &bearer(&renewed), t0 + Duration::days(1), &log)?;
            assert!(authorize(conn, &a, &bearer(&a_credential), t0 + Duration::days(1), &log).is_err());
            conn.execute(
                "UPDATE vehicles SET tls_fingerprint = ?1 WHERE vin = 'VIN-A'",
                params![fingerprint(1).to_string()],
            )?;
            // A certificate can be bound to one vehicle only.
            assert!(matches!(
                insert(
                    conn,
                    &"VIN-C".parse().unwrap(),
                    Some(fingerprint(1)),
                    Duration::days(1),
                    t0
                ),
                Err(DirectorError::Conflict(_))
            ));
            let events = security_events(conn);
            assert!(
                events
                    .iter()
                    .any(|e| e.contains("VIN-B was used for VIN-A")),
                "{events:?}"
            );
            // Revoking unbinds the certificate.
            revoke(conn, &a, "operator:x", t0)?;
            assert!(authorize(conn, &a, &cert(1), t0, &log).is_err());
            let listed = list(conn, None, crate::service::Page::newest(10))?;
            assert_eq!(listed.len(), 2);
            // The most recently registered first.
            assert_eq!(listed[1].vin, a.as_str());
            assert_eq!(listed[1].tls_fingerprint, None);
            assert_eq!(listed[0].tls_fingerprint, Some(fingerprint(2).to_string()));
            Ok::<_, DirectorError>(())
        })
        .unwrap();
    }
}
