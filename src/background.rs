//! The background runtime: management work off the threads that serve proxied requests.
//!
//! A management request costs tens to hundreds of microseconds of CPU: its JSON parsed and
//! validated, a write applied to the snapshot, the writer's group commit published. On the
//! request runtime's workers that time is taken from the proxied requests queued behind it:
//! with sidekey on one core, 500 API writes a second tripled the proxy's p99 (issue 12 §5).
//! [`Background`] is a current-thread Tokio runtime on a thread of its own at the lowest
//! priority (`SCHED_IDLE`, see [`lower_current_thread`]), where the router runs management
//! handlers and the store's writer runs its loop. The kernel gives the core to a request
//! worker as soon as one has work, so writes use idle time first and only finish later when
//! the core is saturated. The connection's HTTP framing stays on the request worker.
//!
//! Work that opens upstream connections must not run here: a pooled connection's task would
//! live on this thread and serve later proxied requests at its priority. A management handler
//! that needs the upstream (a token refresh asked for by `force_refresh`) hands that part back
//! with [`Foreground::run`].

use std::future::Future;

use tokio::runtime::Handle;

/// The nice value of a background thread where `SCHED_IDLE` is not available (see
/// [`lower_current_thread`]).
pub const LOW_NICE: i32 = 19;

/// The background runtime; dropping it stops the thread (tasks still queued are dropped,
/// so a caller waiting on one gets an error, not a hang).
pub struct Background {
    handle: Handle,
    /// Dropped with the runtime handle: the thread's `block_on` returns and the runtime is
    /// dropped on its own thread (dropping a runtime inside another one's task panics).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}

/// Why a task given to [`Background::run`] or [`Foreground::run`] gave no answer.
#[derive(Debug, thiserror::Error)]
#[error("the {0} runtime dropped a task (it panicked or the runtime is stopping)")]
pub struct Dropped(&'static str);

impl Background {
    /// Starts the thread `name` with its runtime (timers and I/O enabled).
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                lower_current_thread(LOW_NICE);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks blocked on something that never ends must not hold the thread.
                runtime.shutdown_background();
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// The runtime's handle, for tasks that live as long as it does (the store's writer).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `task` on the background thread and waits for its output.
    pub async fn run<F>(&self, task: F) -> Result<F::Output, Dropped>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(task)
            .await
            .map_err(|_| Dropped("background"))
    }
}

/// The request runtime, for the parts of background work that must run there.
#[derive(Debug, Clone)]
pub struct Foreground(Handle);

impl Foreground {
    /// The runtime this is called on (the app is built on the request runtime).
    pub fn current() -> Self {
        Self(Handle::current())
    }

    /// Runs `task` on the request runtime and waits for its output.
    pub async fn run<F>(&self, task: F) -> Result<F::Output, Dropped>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.spawn(task).await.map_err(|_| Dropped("request"))
    }
}

/// Moves the calling thread to the lowest priority there is: Linux's `SCHED_IDLE` policy,
/// else (another system, or refused) the nice value `nice`. Threads it starts inherit it.
///
/// Nice 19 alone was not enough: a nice-19 thread still gets its whole time slice once it
/// runs (about 1.5 ms on two CPUs: the scheduler protects a running task's slice until it
/// ends), and a request that arrives meanwhile waits for it. Measured on the store's commit
/// thread, the proxy's p99 tripled under 500 writes/s (issue 12 §5). A `SCHED_IDLE` thread
/// is preempted the moment any ordinary thread wakes, so it only ever uses idle time; the
/// cost is that it gets almost nothing while the core is saturated (writes slow down then;
/// they still complete, since the scheduler gives idle threads a small share).
pub fn lower_current_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        match set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        ) {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = ?e, "cannot make a background thread SCHED_IDLE"),
        }
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::debug!(error = %e, "cannot lower a background thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_a_task_on_its_own_thread_and_returns_its_output() {
        let bg = Background::start("sidekey-test-bg").expect("start");
        let here = std::thread::current().id();
        let (there, name) = bg
            .run(async {
                let t = std::thread::current();
                (t.id(), t.name().map(str::to_string))
            })
            .await
            .expect("ran");
        assert_ne!(here, there);
        assert_eq!(name.as_deref(), Some("sidekey-test-bg"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_thread_runs_at_the_lowest_priority() {
        use thread_priority::unix::{
            thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
        };
        let bg = Background::start("sidekey-test-idle").expect("start");
        let policy = bg
            .run(async { thread_schedule_policy().expect("policy") })
            .await
            .expect("ran");
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        // The request runtime's threads keep the ordinary policy.
        assert_eq!(
            thread_schedule_policy().expect("policy"),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_error_and_the_runtime_goes_on() {
        let bg = Background::start("sidekey-test-panic").expect("start");
        let r = bg.run(async { panic!("boom") }).await;
        assert!(r.is_err());
        assert_eq!(bg.run(async { 7 }).await.expect("still running"), 7);
    }

    #[tokio::test]
    async fn foreground_work_runs_back_on_the_request_runtime() {
        let bg = Background::start("sidekey-test-fg").expect("start");
        let fg = Foreground::current();
        let here = std::thread::current().name().map(str::to_string);
        let back = bg
            .run(async move {
                fg.run(async { std::thread::current().name().map(str::to_string) })
                    .await
                    .expect("ran")
            })
            .await
            .expect("ran");
        assert_eq!(back, here);
    }

    #[test]
    fn dropping_it_inside_a_runtime_does_not_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let bg = Background::start("sidekey-test-drop").expect("start");
            assert_eq!(bg.run(async { 1 }).await.expect("ran"), 1);
            drop(bg);
        });
    }
}
