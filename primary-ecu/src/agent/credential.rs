//! Keeping the vehicle credential alive: renewed when a third of its lifetime is left, so
//! a vehicle that is offline for a while still comes back with one that works.

use uptane_core::time::UtcTime;

use super::Primary;
use crate::ports::{DirectorPort, Ports};

/// Whether a credential issued at `issued` that expires at `expires` is due for renewal at
/// `now`: a third of its lifetime or less left, or its lifetime unknown (a credential from
/// before credentials expired).
pub(crate) fn renewal_due(issued: Option<UtcTime>, expires: Option<UtcTime>, now: UtcTime) -> bool {
    match (issued, expires) {
        (Some(issued), Some(expires)) => {
            let lifetime = expires - issued;
            expires - now <= lifetime / 3
        }
        _ => true,
    }
}

impl<P: Ports> Primary<P> {
    /// Renews the vehicle credential when it is due. The new secret is written (atomically,
    /// mode 0600) before it is used: the Director keeps the old one working until the new
    /// one is first used, so a crash at any point leaves a credential that works.
    pub(super) async fn renew_credential_if_due(&mut self, now: UtcTime) {
        if !renewal_due(
            self.state.credential_issued_at,
            self.state.credential_expires_at,
            now,
        ) {
            return;
        }
        let issued = match self.director.renew_credential().await {
            Ok(issued) => issued,
            Err(e) => {
                tracing::warn!(error = %e, "the vehicle credential was not renewed");
                return;
            }
        };
        let path = self.files.credential();
        if let Err(e) = service_runtime::files::write_atomic(&path, issued.secret.as_bytes()) {
            tracing::error!(error = %e, path = %path.display(), "the renewed credential was not stored");
            return;
        }
        self.director.use_credential(&issued.secret);
        self.state.credential_issued_at = Some(issued.issued_at);
        self.state.credential_expires_at = Some(issued.expires_at);
        if let Err(e) = self.save() {
            tracing::error!(error = %e);
        }
        tracing::info!(
            expires = %uptane_core::time::format_expires(&issued.expires_at),
            "vehicle credential renewed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left_or_an_unknown_lifetime() {
        let at = |t: &str| uptane_core::time::parse_expires(t).unwrap();
        let (issued, expires) = (at("2030-01-01T00:00:00Z"), at("2030-01-31T00:00:00Z"));
        assert!(!renewal_due(
            Some(issued),
            Some(expires),
            at("2030-01-20T23:00:00Z")
        ));
        assert!(renewal_due(
            Some(issued),
            Some(expires),
            at("2030-01-21T00:00:00Z")
        ));
        assert!(renewal_due(
            Some(issued),
            Some(expires),
            at("2030-02-01T00:00:00Z")
        ));
        assert!(renewal_due(None, None, issued));
    }
}
