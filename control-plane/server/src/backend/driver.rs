//! A runtime on a thread of its own, for clients whose futures the blocking methods of a store
//! wait on from any thread — a blocking-pool thread, a plain one, or one inside a runtime —
//! without nesting runtimes (PostgreSQL connections, the object store's HTTP client).

use std::future::Future;

use futures_executor::block_on;
use tokio::sync::oneshot;

/// The thread and its runtime; dropping it stops both (and whatever they drove).
#[derive(Debug)]
pub struct Driver {
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Driver {
    /// Starts the thread, named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let name = name.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async move {
                let _ = stop_rx.await;
            });
        })?;
        let runtime = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the driver thread ended before it started"))??;
        Ok(Self {
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `work` on the driver's runtime and waits for it.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        block_on(self.runtime.spawn(work)).ok()
    }

    /// Starts `work` on the driver's runtime; it ends with the driver.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        drop(self.runtime.spawn(work));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Driver {
    /// Starts `work` on the driver's runtime; its result can be awaited from any runtime.
    pub fn start_task<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.runtime.spawn(work)
    }
}
