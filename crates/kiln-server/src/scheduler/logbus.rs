//! Wakes live log tails when a chunk of their job's log is stored on this replica.
//! Tails on other replicas find new chunks by polling (see `api::logs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Clone, Default)]
pub(crate) struct LogBus {
    jobs: Arc<Mutex<HashMap<i64, watch::Sender<i64>>>>,
}

impl LogBus {
    /// A receiver of the job's log size as chunks are stored here.
    pub fn subscribe(&self, job_id: i64) -> watch::Receiver<i64> {
        let mut jobs = self.jobs.lock().expect("log bus lock");
        jobs.retain(|_, sender| sender.receiver_count() > 0);
        jobs.entry(job_id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub fn stored(&self, job_id: i64, size: i64) {
        let jobs = self.jobs.lock().expect("log bus lock");
        if let Some(sender) = jobs.get(&job_id) {
            sender.send_replace(size);
        }
    }
}
