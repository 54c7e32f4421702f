//! The schedules' two sled trees, beside the flows' (see the parent module).
//!
//! - `schedules`: schedule name → the schedule record, JSON text
//! - `schedule_runs`: name ++ `0x00` ++ tick (u64 ms, big-endian) → a run, JSON text
//!
//! JSON rather than bincode: a schedule holds a flow spec, whose node data is a
//! `serde_json::Value` that bincode cannot decode, and schedules change seldom.
//! Names never hold `0x00` (validation allows `[A-Za-z0-9._-]`), so a name's runs
//! are exactly the keys with its prefix, oldest first.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{Store, StoreError};

fn runs_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

fn run_key(name: &str, tick_ms: u64) -> Vec<u8> {
    let mut key = runs_prefix(name);
    key.extend_from_slice(&tick_ms.to_be_bytes());
    key
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::Decode(e.to_string()))
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

impl Store {
    fn schedules(&self) -> Result<(sled::Tree, sled::Tree), StoreError> {
        Ok((
            self.db.open_tree("schedules")?,
            self.db.open_tree("schedule_runs")?,
        ))
    }

    /// One schedule's record (JSON text), if it exists.
    pub fn schedule(&self, name: &str) -> Result<Option<String>, StoreError> {
        let (schedules, _) = self.schedules()?;
        schedules
            .get(name.as_bytes())?
            .map(|b| text(&b))
            .transpose()
    }

    /// Every schedule's record (JSON text), by name.
    pub fn all_schedules(&self) -> Result<Vec<(String, String)>, StoreError> {
        let (schedules, _) = self.schedules()?;
        schedules
            .iter()
            .map(|entry| {
                let (k, v) = entry?;
                Ok((text(&k)?, text(&v)?))
            })
            .collect()
    }

    /// Every schedule's name, in order (the scheduler then reads one record at a
    /// time, so a pass holds one flow spec in memory, not all of them).
    pub fn schedule_names(&self) -> Result<Vec<String>, StoreError> {
        let (schedules, _) = self.schedules()?;
        schedules.iter().keys().map(|k| text(&k?)).collect()
    }

    /// Number of schedules.
    pub fn schedule_count(&self) -> Result<usize, StoreError> {
        Ok(self.schedules()?.0.len())
    }

    /// Writes a schedule's record and, when given, one run, in one transaction;
    /// then drops the schedule's oldest runs past `keep_runs`, and flushes. Durable
    /// when it returns.
    pub async fn put_schedule(
        &self,
        name: &str,
        record: &str,
        run: Option<(u64, &str)>,
        keep_runs: usize,
    ) -> Result<(), StoreError> {
        let (schedules, runs) = self.schedules()?;
        (&schedules, &runs)
            .transaction(|(schedules, runs)| {
                schedules.insert(name.as_bytes(), record.as_bytes())?;
                if let Some((tick, run)) = run {
                    runs.insert(run_key(name, tick), run.as_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        let prefix = runs_prefix(name);
        let count = runs.scan_prefix(&prefix).keys().count();
        if count > keep_runs {
            for key in runs.scan_prefix(&prefix).keys().take(count - keep_runs) {
                runs.remove(key?)?;
            }
        }
        self.flush().await
    }

    /// Creates a schedule unless one of that name exists; returns whether it did.
    /// Durable when it returns `true`.
    pub async fn insert_schedule(&self, name: &str, record: &str) -> Result<bool, StoreError> {
        let (schedules, _) = self.schedules()?;
        let inserted = schedules
            .compare_and_swap(name.as_bytes(), None::<&[u8]>, Some(record.as_bytes()))?
            .is_ok();
        if inserted {
            self.flush().await?;
        }
        Ok(inserted)
    }

    /// Removes a schedule and its runs; returns whether it existed. Durable when it
    /// returns.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let (schedules, runs) = self.schedules()?;
        let existed = schedules.remove(name.as_bytes())?.is_some();
        for key in runs.scan_prefix(runs_prefix(name)).keys() {
            runs.remove(key?)?;
        }
        self.flush().await?;
        Ok(existed)
    }

    /// A schedule's runs (JSON text), newest first, at most `limit`.
    pub fn schedule_runs(&self, name: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let (_, runs) = self.schedules()?;
        runs.scan_prefix(runs_prefix(name))
            .values()
            .rev()
            .take(limit)
            .map(|v| text(&v?))
            .collect()
    }
}
