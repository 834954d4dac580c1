//! The Director's part of the time model (docs/SECURITY.md, "Time"): the operator's time
//! reset for a vehicle, signed into its Director targets as `timeReset` (with `signedAt`,
//! `uptane_core::uptane::with_signing_time`), so a vehicle whose trusted time went past the
//! real one (the Director's own clock jumped ahead while it signed) can come back by an
//! authenticated action instead of a file edit on the vehicle.

use crate::params;
use crate::sql::Conn;
use uptane_core::ids::Vin;
use uptane_core::time::UtcTime;

use super::events::NewEvent;
use crate::error::DirectorError;

/// Asks vehicle `vin` to accept an earlier time once: the reset number goes up, and the
/// vehicle's next metadata (signed at once: the content changed) carries it. Returns the
/// new number.
pub fn reset_time(
    conn: &mut Conn,
    vin: &Vin,
    actor: &str,
    now: UtcTime,
) -> Result<u64, DirectorError> {
    let tx = conn.savepoint()?;
    let reset: Option<i64> = tx.query_opt(
        "UPDATE vehicles SET time_reset = time_reset + 1 WHERE vin = ?1 RETURNING time_reset",
        params![vin.as_str()],
        |r| r.get(0),
    )?;
    let reset = reset.ok_or_else(|| DirectorError::NotFound(format!("no vehicle {vin}")))?;
    NewEvent::security(
        "time_reset_requested",
        actor,
        &format!("reset {reset}: the vehicle accepts the time of its next Director metadata"),
    )
    .vin(vin.as_str())
    .record(&tx, now)?;
    tx.commit()?;
    Ok(reset as u64)
}

impl super::DirectorService {
    /// An operator asks vehicle `vin` to accept an earlier time once.
    pub async fn reset_time(&self, actor: &super::Actor, vin: Vin) -> Result<u64, DirectorError> {
        let actor = actor.as_str().to_string();
        let forget = vin.clone();
        // The reset is signed into the vehicle's next targets.
        self.write_vehicle(&forget, move |conn| {
            reset_time(conn, &vin, &actor, super::now())
        })
        .await
    }
}
