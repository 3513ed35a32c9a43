//! Leader election over a `coordination.k8s.io` Lease (kube-leader-election):
//! only the holder reconciles, so two operator replicas never both do.

use std::time::{Duration, Instant};

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};

/// Campaigns for, holds and releases the operator's Lease.
pub struct Elector {
    lock: LeaseLock,
    ttl: Duration,
    renew: Duration,
    id: String,
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `id` (the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, id: &str, ttl: Duration) -> Self {
        let params = LeaseLockParams { lease_name: name.into(), holder_id: id.into(), lease_ttl: ttl };
        Elector { lock: LeaseLock::new(client, namespace, params), ttl, renew: ttl / 3, id: id.into() }
    }

    /// One acquire-or-renew request, bounded by the renew interval (the client itself has no
    /// read timeout, and a hung request must not look like a held Lease).
    async fn attempt(&self) -> Result<LeaseLockResult, String> {
        match tokio::time::timeout(self.renew, self.lock.try_acquire_or_renew()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the Lease request timed out".into()),
        }
    }

    /// Waits until this replica holds the Lease, confirmed by a second renewal one
    /// interval later (the Lease is taken with a read then an unconditional patch, so
    /// two stand-bys racing for a released Lease can both be told they have it; only
    /// the one whose write stuck is still the holder at the second look).
    pub async fn acquire(&self) -> Instant {
        let mut logged = false;
        let mut pending = false;
        loop {
            let sent = Instant::now();
            match self.attempt().await {
                Ok(LeaseLockResult::Acquired(lease)) if self.holds(&lease) && pending => {
                    tracing::info!(id = %self.id, "leadership acquired");
                    return sent;
                }
                Ok(LeaseLockResult::Acquired(lease)) if self.holds(&lease) => pending = true,
                Ok(LeaseLockResult::Acquired(_)) => pending = false,
                Ok(LeaseLockResult::NotAcquired(lease)) => {
                    pending = false;
                    if !logged {
                        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                        tracing::info!(id = %self.id, %holder, "standing by: another replica leads");
                        logged = true;
                    }
                }
                Err(e) => {
                    pending = false;
                    tracing::warn!(error = %e, "leader election failed; retrying");
                }
            }
            tokio::time::sleep(self.renew).await;
        }
    }

    /// Renews the Lease until it cannot be sure it still holds it, then returns:
    /// the caller must stop reconciling at once. It returns before the Lease can
    /// have expired for the others (one renew interval early).
    /// `since`: when the renewal that confirmed leadership was sent (from [`Elector::acquire`]).
    pub async fn hold(&self, since: Instant) -> String {
        let mut last_ok = since;
        loop {
            // A hard deadline: one interval before the Lease can have expired for the others,
            // however long a request hangs.
            let deadline = last_ok + self.ttl.saturating_sub(self.renew);
            let next = (Instant::now() + self.renew).min(deadline);
            tokio::time::sleep_until(next.into()).await;
            if Instant::now() >= deadline {
                return format!("could not renew the Lease for {:?}", last_ok.elapsed());
            }
            // The Lease runs from when the renewal was sent, not from its answer.
            let sent = Instant::now();
            let answer = tokio::time::timeout_at(deadline.into(), self.attempt()).await;
            match answer {
                Ok(Ok(LeaseLockResult::Acquired(lease))) if self.holds(&lease) => last_ok = sent,
                Ok(Ok(_)) => return "another replica took the Lease".into(),
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the Lease failed"),
                Err(_) => return format!("could not renew the Lease for {:?}", last_ok.elapsed()),
            }
        }
    }

    fn holds(&self, lease: &k8s_openapi::api::coordination::v1::Lease) -> bool {
        lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.id.as_str())
    }

    /// Gives the Lease up (a clean shutdown), so another replica takes over at once.
    pub async fn step_down(&self) {
        if let Err(e) = self.lock.step_down().await {
            tracing::warn!(error = %e, "could not release the Lease");
        }
    }
}
