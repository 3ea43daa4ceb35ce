//! The durable queues in memory.

use super::*;

/// Copy and callback jobs, queued in order.
#[derive(Default)]
pub struct MemoryQueue {
    jobs: Mutex<VecDeque<CopyJob>>,
    /// Create jobs with the delay each was sent with.
    creates: Mutex<VecDeque<(CreateJob, Duration)>>,
    callbacks: Mutex<VecDeque<CallbackJob>>,
    dead_callbacks: Mutex<Vec<CallbackJob>>,
    failing_sends: Mutex<usize>,
}

impl MemoryQueue {
    /// Takes every queued create job, with its delay.
    pub fn drain_creates(&self) -> Vec<(CreateJob, Duration)> {
        lock(&self.creates).drain(..).collect()
    }

    /// Takes every queued callback job.
    pub fn drain_callbacks(&self) -> Vec<CallbackJob> {
        lock(&self.callbacks).drain(..).collect()
    }

    /// The callback jobs dead-lettered so far.
    pub fn dead_callbacks(&self) -> Vec<CallbackJob> {
        lock(&self.dead_callbacks).clone()
    }

    fn injected_failure(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut failing = lock(&self.failing_sends);
        if *failing > 0 {
            *failing -= 1;
            return Err(StoreError::new(operation, "injected failure"));
        }
        Ok(())
    }

    /// Takes every queued job (a test then runs them, as the worker would).
    pub fn drain(&self) -> Vec<CopyJob> {
        lock(&self.jobs).drain(..).collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the next `n` sends fail, as an SQS outage would.
    pub fn fail_next_sends(&self, n: usize) {
        *lock(&self.failing_sends) = n;
    }
}

impl JobQueue for MemoryQueue {
    async fn send_copy(&self, job: &CopyJob) -> Result<(), StoreError> {
        self.injected_failure("send copy job")?;
        lock(&self.jobs).push_back(job.clone());
        Ok(())
    }

    async fn send_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        self.injected_failure("send callback job")?;
        lock(&self.callbacks).push_back(job.clone());
        Ok(())
    }

    async fn send_create(&self, job: &CreateJob, delay: Duration) -> Result<(), StoreError> {
        self.injected_failure("send create job")?;
        lock(&self.creates).push_back((job.clone(), delay));
        Ok(())
    }

    async fn dead_letter_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        self.injected_failure("dead-letter callback job")?;
        lock(&self.dead_callbacks).push(job.clone());
        Ok(())
    }
}
