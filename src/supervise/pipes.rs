//! The executor's stdout and stderr readers, which always end.
//!
//! A pipe reaches end-of-file only when every process holding its write end
//! has closed it, and a descendant the runner cannot reach (one that passed
//! the fd to an unrelated process, one of another user) may hold it for
//! ever. A reader blocked in `read()` would then never end, and each such
//! execution would leak a thread and a file descriptor until the runner hit
//! "Too many open files". So each reader waits in `poll()` on its
//! non-blocking pipe AND on a shared stop eventfd: once the executor is gone,
//! its leftovers were killed, and the drain time has passed, the eventfd is
//! signalled, the readers return, and each closes its own read end (closing
//! an fd another thread may be reading is not safe: the number can be
//! reused under it).

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

use crate::output::Output;

/// How long output pipes may stay open after the executor exited and its
/// leftovers were killed, before the readers stop anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A pipe read through `poll()`, ending early once `stop` is signalled.
struct Polled {
    pipe: OwnedFd,
    stop: Arc<OwnedFd>,
}

impl Polled {
    fn new(pipe: OwnedFd, stop: Arc<OwnedFd>) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&pipe, true)?;
        Ok(Self { pipe, stop })
    }
}

impl Read for Polled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(&self.pipe, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
            let mut fds = [
                PollFd::new(&self.pipe, PollFlags::IN),
                PollFd::new(&*self.stop, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if !fds[1].revents().is_empty() {
                // Told to stop: what is still unread is given up, as
                // end-of-file.
                return Ok(0);
            }
        }
    }
}

/// The reader threads of one child's output.
pub struct Readers {
    label: String,
    stop: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    done_tx: crossbeam_channel::Sender<()>,
    done: crossbeam_channel::Receiver<()>,
}

impl Readers {
    /// No readers yet. Fails only when no stop eventfd can be made (no fds
    /// left): readers that could not be stopped must not start.
    pub fn new(label: &str) -> io::Result<Self> {
        let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
        // Room for every reader's "done", so a reader never blocks on it.
        let (done_tx, done) = crossbeam_channel::bounded::<()>(8);
        Ok(Self {
            label: label.to_string(),
            stop,
            threads: Vec::new(),
            done_tx,
            done,
        })
    }

    /// Reads the child's stdout and stderr lines into `on_output`.
    pub fn lines<F>(
        label: &str,
        pipes: Vec<(&'static str, OwnedFd)>,
        on_output: Arc<F>,
    ) -> io::Result<Self>
    where
        F: Fn(Output) + Send + Sync + 'static,
    {
        let mut readers = Self::new(label)?;
        for (name, pipe) in pipes {
            let on_output = on_output.clone();
            let label = label.to_string();
            readers.spawn(name, pipe, move |source| {
                if let Err(e) = crate::output::read_lines(source, |o| on_output(o)) {
                    log::warn!("{label}: reading its {name}: {e}");
                }
            });
        }
        Ok(readers)
    }

    /// Starts a thread `exec-<name>` running `body` on `pipe`, read so that
    /// it ends when [`Readers::finish`] says so. A reader (3 at most) that
    /// cannot be started is logged; the pipe is then closed unread.
    pub fn spawn(
        &mut self,
        name: &'static str,
        pipe: OwnedFd,
        body: impl FnOnce(&mut dyn Read) + Send + 'static,
    ) {
        let mut polled = match Polled::new(pipe, self.stop.clone()) {
            Ok(p) => p,
            Err(e) => {
                log::error!("{}: cannot make its {name} non-blocking: {e}", self.label);
                return;
            }
        };
        let done = self.done_tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("exec-{name}"))
            .spawn(move || {
                body(&mut polled);
                // The read end closes here, on the thread that read it.
                drop(polled);
                let _ = done.send(());
            });
        match spawned {
            Ok(h) => self.threads.push(h),
            Err(e) => log::error!(
                "{}: cannot start a reader thread for its {name}: {e}",
                self.label
            ),
        }
    }

    /// Waits for the readers to reach end-of-file until `deadline`, then
    /// stops those still reading; returns once every reader thread ended.
    /// `true` when all reached end-of-file on their own.
    pub fn finish(mut self, deadline: Instant) -> bool {
        let mut ended = 0;
        while ended < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                break;
            }
            ended += 1;
        }
        let all = ended == self.threads.len();
        if !all {
            if let Err(e) = rustix::io::write(&*self.stop, &1u64.to_ne_bytes()) {
                // Cannot happen with a valid eventfd; without it the join
                // below could wait for ever, so say so loudly.
                log::error!("cannot stop the output readers: {e}");
            }
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// std's pipes are close-on-exec, like the executor's.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let (read, write) = std::io::pipe().expect("a pipe");
        (read.into(), write.into())
    }

    #[test]
    fn readers_end_by_the_deadline_while_someone_else_holds_the_write_end() {
        let (read, write) = pipe();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let lines = lines.clone();
            Arc::new(move |o: Output| {
                if let Output::Line(l) = o {
                    lines.lock().unwrap().push(l);
                }
            })
        };
        let readers = Readers::lines("test", vec![("stdout", read)], sink).unwrap();
        rustix::io::write(&write, b"one\ntwo\n").unwrap();
        let started = Instant::now();
        let all = readers.finish(Instant::now() + Duration::from_millis(300));
        assert!(!all, "the write end is still open");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(*lines.lock().unwrap(), vec!["one", "two"]);
        // The read end is closed: writing now fails instead of blocking.
        assert_eq!(
            rustix::io::write(&write, b"x"),
            Err(rustix::io::Errno::PIPE)
        );
    }

    #[test]
    fn readers_end_at_once_when_the_pipe_closes() {
        let (read, write) = pipe();
        let readers =
            Readers::lines("test", vec![("stdout", read)], Arc::new(|_o: Output| {})).unwrap();
        drop(write);
        let started = Instant::now();
        assert!(readers.finish(Instant::now() + Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
