//! Running blocking work off the async threads, and locks that outlive a
//! panicked holder.
//!
//! sled, segment files and hashing block; they run on Tokio's blocking pool
//! through [`blocking`]. A task that panics there is a bug, not a disk
//! fault, so it surfaces as [`TaskFailed`] rather than as an I/O error.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A blocking task panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("{what}: background task failed: {why}")]
pub struct TaskFailed {
    /// What the task was doing.
    pub what: &'static str,
    /// The panic or cancellation message.
    pub why: String,
}

/// Runs `f` on the blocking pool. Its error type carries [`TaskFailed`]
/// too, so a panic comes back as that and never as one of `f`'s own errors.
pub async fn blocking<T, E>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    // Keep the caller's span, so the work logs under the node it is for.
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(r) => r,
        Err(e) => Err(TaskFailed {
            what,
            why: e.to_string(),
        }
        .into()),
    }
}

/// Locks `m`, taking the data over if a holder panicked: every value kept
/// behind these locks stays consistent between statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, like [`lock`].
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, like [`lock`].
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("io")]
        Io(#[from] std::io::Error),
        #[error(transparent)]
        Task(#[from] TaskFailed),
    }

    #[tokio::test]
    async fn a_panic_is_not_an_io_error() {
        let r: Result<(), E> = blocking("testing", || panic!("boom")).await;
        assert!(matches!(
            r,
            Err(E::Task(TaskFailed {
                what: "testing",
                ..
            }))
        ));
        let r: Result<u8, E> =
            blocking("testing", || Err(std::io::Error::other("disk").into())).await;
        assert!(matches!(r, Err(E::Io(_))));
        let r: Result<u8, E> = blocking("testing", || Ok(7)).await;
        assert_eq!(r.unwrap(), 7);
    }

    #[test]
    fn poisoned_locks_are_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
