//! Sending the books to the store: idempotent batches, reading budget usage back, and the
//! carry-over of what a stopped replica could not send.

use super::*;

impl Books {
    /// Sends pending reservations and counts to the store, then reads the budgets' usage back.
    /// Nothing is lost and nothing counts twice: what was not acknowledged is resent as the same
    /// batch (the store applies a batch id once), also after a timeout whose write did land, or
    /// a flush that was cancelled midway.
    pub async fn flush(
        &self,
        policy: &Policy,
        store: &dyn StateStore,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let _one = self.flush_lock.lock().await;
        // What a previous run left, first and as is (a batch that landed before it stopped
        // is not applied twice).
        loop {
            let next = self.lock().resumed.front().cloned();
            let Some(b) = next else { break };
            store.add_counters(b.id, &b.adds).await?;
            self.observe(&b.adds);
            let mut local = self.lock();
            local.resumed.pop_front();
            // All sent: what the sealed batches reserved counts as seen until a read shows it.
            if local.resumed.is_empty() {
                let sealed = std::mem::take(&mut local.sealed);
                for (id, periods) in sealed {
                    for (start, v) in periods {
                        add_usage(&mut local.seen, &id, start, v);
                    }
                }
            }
        }
        let batch = {
            let mut local = self.lock();
            if local.batch.is_none() {
                let (adds, pending) = local.drain_adds(&self.shards);
                if !adds.is_empty() {
                    local.batch = Some(Batch {
                        id: rand::random(),
                        adds,
                    });
                    local.in_flight = pending;
                }
            }
            local.batch.clone()
        };
        if let Some(batch) = batch {
            // On error the batch stays for the next flush.
            store.add_counters(batch.id, &batch.adds).await?;
            self.observe(&batch.adds);
            let mut local = self.lock();
            local.batch = None;
            // Acknowledged: count it as seen until a read shows it.
            let in_flight = std::mem::take(&mut local.in_flight);
            for (id, periods) in in_flight {
                for (start, v) in periods {
                    add_usage(&mut local.seen, &id, start, v);
                }
            }
        }
        let starts: Vec<u64> = policy
            .budgets
            .iter()
            .map(|b| b.period.start_ms(now_ms))
            .collect();
        let hashes: Vec<String> = policy
            .budgets
            .iter()
            .zip(&starts)
            .map(|(b, start)| budget_hash(&b.id, *start))
            .collect();
        let values = store.read_counters(&hashes).await?;
        let mut local = self.lock();
        let mut seen = Usage::new();
        for ((b, start), fields) in policy.budgets.iter().zip(starts).zip(values) {
            // Spend adds up to zero or more: a negative total was written by hand (or by a
            // replica that lost Route's reservations) and would lift the budget's limit.
            let at_least_zero = |key: &str, used: i64| {
                if used < 0 {
                    tracing::warn!(budget = %key, used_micros = used, "budget usage in the store is negative; counted as 0");
                }
                used.max(0)
            };
            for (field, used) in &fields {
                let key = match field.strip_prefix(BUDGET_USED) {
                    Some("") => b.id.clone(),
                    // A team's part of a budget with team shares.
                    Some(rest) => match rest.strip_prefix(':') {
                        Some(team) => team_usage_key(&b.id, team),
                        None => continue,
                    },
                    None => continue,
                };
                let used = at_least_zero(&key, *used);
                seen.insert(key, HashMap::from([(start, used)]));
            }
        }
        local.seen = seen;
        Ok(())
    }

    /// Every budget of the policy with its usage in its current period, as this replica sees it.
    pub fn budget_usage(&self, policy: &Policy, now_ms: u64) -> Vec<BudgetUse> {
        let local = self.lock();
        policy
            .budgets
            .iter()
            .map(|b| {
                let start = b.period.start_ms(now_ms);
                BudgetUse {
                    budget: b.clone(),
                    period_start_ms: start,
                    used_micros: local.used(&b.id, start),
                }
            })
            .collect()
    }

    /// Everything not yet acknowledged by the store, as batches to send as they are: the batch
    /// in flight (its id kept), then the rest as one new batch. Leaves the books empty: for a
    /// shutdown that could not flush, so the next start can send them.
    pub fn take_unflushed(&self) -> Vec<Batch> {
        let mut local = self.lock();
        let mut out: Vec<Batch> = local.resumed.drain(..).collect();
        out.extend(local.batch.take());
        local.in_flight.clear();
        local.sealed.clear();
        let (adds, _) = local.drain_adds(&self.shards);
        if !adds.is_empty() {
            out.push(Batch {
                id: rand::random(),
                adds,
            });
        }
        out
    }

    /// Seals what this replica has not sent into batches of fixed ids, queued to be sent first:
    /// the batch in flight (its id kept) and the counts since (a new one). Returns the new
    /// batches, for the carry-over file: during an outage they are appended there as they are
    /// sealed, so a replica killed mid-outage loses at most the counts since its last seal.
    pub fn seal(&self) -> Vec<Batch> {
        let mut local = self.lock();
        let mut out: Vec<Batch> = local.batch.take().into_iter().collect();
        let in_flight = std::mem::take(&mut local.in_flight);
        let (adds, pending) = local.drain_adds(&self.shards);
        for usage in [in_flight, pending] {
            for (id, periods) in usage {
                for (start, v) in periods {
                    add_usage(&mut local.sealed, &id, start, v);
                }
            }
        }
        if !adds.is_empty() {
            out.push(Batch {
                id: rand::random(),
                adds,
            });
        }
        local.resumed.extend(out.iter().cloned());
        out
    }

    /// Queues batches a previous run could not send; the next flush sends them first.
    pub fn resume(&self, batches: Vec<Batch>) {
        self.lock().resumed.extend(batches);
    }

    /// Batches waiting from a previous run.
    pub fn resumed(&self) -> usize {
        self.lock().resumed.len()
    }

    /// Route-time counts not yet flushed.
    #[cfg(test)]
    pub(crate) fn pending_cells(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).cells.len())
            .sum()
    }
}
