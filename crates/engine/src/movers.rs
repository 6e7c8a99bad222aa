//! Page movers: worker threads that copy pages between crust and frozen or
//! half-restored tasks while the tracer thread (the only one that may
//! ptrace them) goes on with the next task. Copying needs no ptrace, only
//! process_vm_readv/writev or a userfaultfd, so the two overlap, and on a
//! machine with more than one CPU so do the copies of several tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use crate::error::{Error, Result};

/// Number of mover threads: one per CPU (the tracer mostly waits for its
/// tasks), at most four.
pub fn default_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

type Job<'scope> = Box<dyn FnOnce() -> Result<()> + Send + 'scope>;
/// A job with where its result goes.
type Queued<'scope> = (Job<'scope>, SyncSender<Result<()>>);

/// Nice value of mover threads.
const MOVER_NICE: i32 = 10;

/// Run queued jobs until the queue closes.
fn mover_loop(rx: &Mutex<Receiver<Queued<'_>>>, aborted: &AtomicBool) {
    loop {
        let next = rx.lock().map(|r| r.recv());
        let Ok(Ok((job, done))) = next else {
            return;
        };
        let res = if aborted.load(Ordering::Relaxed) {
            Err(Error::Movers("skipped after an earlier error"))
        } else {
            job()
        };
        // The submitter may have given up waiting; nothing to tell.
        let _ = done.send(res);
    }
}

/// A pool of mover threads inside a [`std::thread::scope`]. Dropping it
/// lets the threads finish; jobs not started yet are skipped when it was
/// dropped without [`Movers::finish`] (an error path).
pub struct Movers<'scope> {
    jobs: Option<Sender<Queued<'scope>>>,
    aborted: Arc<AtomicBool>,
}

/// The result of one submitted job, to [`Pending::wait`] for.
pub struct Pending(Receiver<Result<()>>);

impl<'scope> Movers<'scope> {
    /// Start `count` mover threads in `scope`.
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, count: usize) -> Self {
        let (tx, rx) = channel::<Queued<'scope>>();
        let rx = Arc::new(Mutex::new(rx));
        let aborted = Arc::new(AtomicBool::new(false));
        for _ in 0..count.max(1) {
            let rx = Arc::clone(&rx);
            let aborted = Arc::clone(&aborted);
            scope.spawn(move || {
                // The tracer waits on its tasks at every remote syscall:
                // when CPUs are short, it goes first (measured: the tree
                // restore's mapping phase took 370 ms next to movers at the
                // same priority, 100-190 ms at nice 10).
                let _ = crust_sys::task::set_nice(nix::unistd::gettid().as_raw(), MOVER_NICE);
                mover_loop(&rx, &aborted)
            });
        }
        Movers {
            jobs: Some(tx),
            aborted,
        }
    }

    /// Queue `job` for the next free mover.
    pub fn submit(&self, job: impl FnOnce() -> Result<()> + Send + 'scope) -> Pending {
        let (done_tx, done_rx) = sync_channel(1);
        let sent = self
            .jobs
            .as_ref()
            .map(|tx| tx.send((Box::new(job), done_tx)).is_ok())
            .unwrap_or(false);
        if !sent {
            // No mover is left (they only stop once the pool is dropped).
            let (tx, rx) = sync_channel(1);
            let _ = tx.send(Err(Error::Movers("no mover thread left")));
            return Pending(rx);
        }
        Pending(done_rx)
    }

    /// Every job was waited for: let the threads go.
    pub fn finish(mut self) {
        self.jobs = None;
    }
}

impl Drop for Movers<'_> {
    fn drop(&mut self) {
        if self.jobs.take().is_some() {
            self.aborted.store(true, Ordering::Relaxed);
        }
    }
}

impl Pending {
    /// Wait for the job and return its result.
    pub fn wait(self) -> Result<()> {
        self.0
            .recv()
            .unwrap_or(Err(Error::Movers("its thread died")))
    }
}
